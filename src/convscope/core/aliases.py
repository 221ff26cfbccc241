"""Old module paths keep working: ``convscope.api``, ``convscope.attribution.cam``, ``convscope.toydata``.

The package is laid out in layer folders (``core``, ``data``, ``models``, ``engines``, ``methods``,
``frontends``; see ``docs/design.md``). Code written against the flat layout of earlier releases
imports modules such as ``convscope.hooks`` or ``convscope.attribution.cam``; an import hook maps
each old path to the module that now holds it and returns *that* module object, so a name patched
on one is patched on the other and nothing is loaded twice. New code imports the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import CodeType, ModuleType

__all__ = ["GONE", "MOVED", "install", "new_path", "old_attribute"]

#: old module path -> its home in the layered layout (a prefix maps everything below it too)
MOVED: dict[str, str] = {
    # modules that left their package (the longest old path wins)
    "convscope.dataset.sources": "convscope.data.sources",
    "convscope.dataset._stream": "convscope.data.stream",
    "convscope.attribution._tokens": "convscope.models.tokens",
    "convscope._io": "convscope.core.io",
    "convscope._progress": "convscope.core.progress",
    "convscope._validate": "convscope.core.validate",
    "convscope._figure": "convscope.core.figure",
    "convscope._result": "convscope.core.result",
    "convscope.errors": "convscope.core.errors",
    "convscope.image": "convscope.core.image",
    "convscope.targets": "convscope.core.targets",
    "convscope.results": "convscope.core.results",
    "convscope.hooks": "convscope.core.hooks",
    "convscope.toydata": "convscope.data.toydata",
    "convscope.datasets": "convscope.data.toydata",
    "convscope.inputs": "convscope.models.inputs",
    "convscope.perturb": "convscope.engines.perturb",
    "convscope.optimize": "convscope.engines.optimize",
    "convscope.registry": "convscope.methods.registry",
    "convscope.attribution": "convscope.methods.attribution",
    "convscope.api": "convscope.methods.explain",
    "convscope.grids": "convscope.methods.grids",
    "convscope.jobs": "convscope.methods.jobs",
    "convscope.featvis": "convscope.methods.featvis",
    "convscope.synthesis": "convscope.methods.synthesis",
    "convscope.evaluation": "convscope.methods.evaluation",
    "convscope.dataset": "convscope.methods.dataset",
    "convscope.report": "convscope.frontends.report",
    "convscope.serve": "convscope.frontends.serve",
    "convscope.cli": "convscope.frontends.cli",
    "convscope.demo": "convscope.frontends.demo",
}


#: old paths that cannot be aliased, with where their contents went (an ImportError says it)
GONE: dict[str, str] = {
    "convscope.concepts": "the TCAV package moved to convscope.methods.tcav (cs.concept_test); "
                          "cs.concepts is now concept relevance (CRP, convscope.methods.crp)",
}


def new_path(name: str) -> str | None:
    """The module that now holds the old module path ``name`` (``None``: not an old path)."""
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        head = ".".join(parts[:i])
        if head in MOVED:
            return ".".join([MOVED[head], *parts[i:]])
    return None


class _KeepsNames(ModuleType):
    """A package whose public names win over its submodules of the same name.

    ``convscope.methods.dataset`` exports the function ``embed`` and holds the module ``embed.py``.
    Importing an old path such as ``convscope.dataset.embed`` for the first time makes the import
    system bind the submodule on its parent package (the same object as the new package), which
    would replace the function; a package the alias import finds in that position gets this class,
    which keeps the function.
    """

    def __setattr__(self, name: str, value: object) -> None:
        current = self.__dict__.get(name)
        if (isinstance(value, ModuleType) and current is not None and not isinstance(current, ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return
        super().__setattr__(name, value)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds old paths and loads them as the module at the new path (the same object)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):  # noqa: ANN201
        for old, where in GONE.items():
            if fullname == old or fullname.startswith(old + "."):
                raise ImportError(f"{fullname}: {where}", name=fullname)
        new = new_path(fullname)
        if new is None or importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):  # noqa: ANN001, ANN201
        """A throwaway placeholder: the import system sets the alias's attributes on it, not on the
        real module (which other threads may be using)."""
        return None

    def exec_module(self, module: ModuleType) -> None:
        """Import the module at the new path and put *it* in ``sys.modules`` under the old name; the
        import system returns what ``sys.modules`` holds after this step, so the old name is the same
        object as the new one, whose own ``__spec__`` (a package where there is one, for
        ``importlib.resources`` and ``python -m``) is never touched."""
        real = importlib.import_module(new_path(module.__name__))  # type: ignore[arg-type]
        sys.modules[module.__name__] = real
        parent_name, _, child = module.__name__.rpartition(".")
        parent = sys.modules.get(parent_name)
        if (type(parent) is ModuleType and child in parent.__dict__
                and not isinstance(parent.__dict__[child], ModuleType)):
            parent.__class__ = _KeepsNames  # the import system binds ``child`` on the parent next

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code (``python -m convscope.cli.main`` runs it)."""
        new = new_path(fullname)
        spec = importlib.util.find_spec(new) if new else None
        loader = getattr(spec, "loader", None)
        return loader.get_code(new) if isinstance(loader, importlib.abc.InspectLoader) else None

    def get_source(self, fullname: str) -> str | None:
        return None


def old_attribute(name: str) -> ModuleType:
    """``convscope.<name>`` for an old top-level submodule read as an attribute (``cs.errors``,
    ``cs.hooks``, ``cs.attribution``): the moved module (the package's ``__getattr__``).

    Raises:
        AttributeError: ``name`` is not an old submodule.
    """
    new = MOVED.get(f"convscope.{name}")
    if new is None:
        raise AttributeError(f"module 'convscope' has no attribute {name!r}")
    return importlib.import_module(new)


_FINDER = _Alias()


def install() -> None:
    """Put the old-path finder first on ``sys.meta_path`` (once)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
