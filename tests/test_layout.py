"""The layout rules of docs/design.md that a scan can check (issues #20, #30).

* the top of the package holds ``__init__.py``, ``__main__.py``, ``py.typed`` and the layer folders,
  and every folder is a layer of the import contract in ``pyproject.toml`` (``lint-imports``);
* no import cycle between modules anywhere (grimp's graph, function-level imports included);
* no module over 400 lines; hooks registered in ``core/hooks.py`` only; no private name imported
  across packages;
* the registry is what it was before the move into layer folders (a snapshot written by the flat
  layout), and the old module paths still import, as the same module objects.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "convscope"
MODULES = sorted(SRC.rglob("*.py"))
LAYERS = ["frontends", "methods", "engines", "data", "models", "core"]  # top to bottom


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_scan_sees_the_package():
    assert len(MODULES) > 50 and (SRC / "core" / "hooks.py") in MODULES


def test_the_top_of_the_package_is_the_api_and_the_layer_folders():
    top = {p.name for p in SRC.iterdir() if p.name != "__pycache__"}
    assert top == {"__init__.py", "__main__.py", "py.typed", *LAYERS}, sorted(top)


def test_the_import_contract_names_every_layer_folder():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    first = cfg["contracts"][0]
    assert first["type"] == "layers" and first["layers"] == [f"convscope.{n}" for n in LAYERS]
    # the method and front-end contracts cover every subpackage or module of their folder
    for c in cfg["contracts"][1:]:
        (container,) = c["containers"]
        named = {n.strip() for layer in c["layers"] for n in layer.split("|")}
        folder = SRC / container.split(".", 1)[1]
        present = {p.stem for p in folder.iterdir() if p.name != "__init__.py" and p.name != "__pycache__"
                   and (p.suffix == ".py" or (p / "__init__.py").exists())}
        assert present == named, (container, sorted(present ^ named))


def test_the_import_contract_holds():
    """``lint-imports`` (import-linter) on the package: the layers import only downwards."""
    linter = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and r.stdout.count("KEPT") == 3


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    grimp = pytest.importorskip("grimp")
    g = grimp.build_graph("convscope", include_external_packages=False, exclude_type_checking_imports=True)
    edges = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert len(edges) == len(MODULES)
    assert not _cycles(edges), _cycles(edges)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_400_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 400, f"{path.relative_to(SRC)} has {n} lines: split it by responsibility (docs/design.md)"


HOOK_CALL = re.compile(r"\.register_(forward_hook|forward_pre_hook|full_backward_hook|full_backward_pre_hook|"
                       r"backward_hook|hook|module_forward_hook)\(")


def test_hooks_are_registered_only_in_hooks_py():
    hooks = SRC / "core" / "hooks.py"
    found = [f"{p.relative_to(SRC)}:{i}" for p in MODULES if p != hooks
             for i, line in enumerate(p.read_text().splitlines(), 1) if HOOK_CALL.search(line)]
    assert not found, f"hooks registered outside convscope/core/hooks.py: {found}"
    assert HOOK_CALL.search(hooks.read_text())  # the pattern does find them where they are


FROM_IMPORT = re.compile(r"^[ \t]*from (convscope[\w.]*|\.+[\w.]*) import (\([^)]*\)|.*)$", re.M)


def _private(names: str) -> list[str]:
    names = re.sub(r"#.*", "", names).strip("()")
    return [n for n in (part.strip().split(" as ")[0] for part in names.split(","))
            if n.startswith("_") and not n.startswith("__")]


def _private_imports(path: Path) -> list[str]:
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for m in FROM_IMPORT.finditer(path.read_text()):
        source = m.group(1)
        if source.startswith("."):
            dots = len(source) - len(source.lstrip("."))
            base = package.split(".")[: len(package.split(".")) - dots + 1]
            source = ".".join(base + [source.lstrip(".")]) if source.lstrip(".") else ".".join(base)
        src_path = SRC.parent / Path(*source.split("."))
        src_package = source if (src_path / "__init__.py").exists() else source.rpartition(".")[0]
        if src_package != package:
            found += [f"{me}: {n} from {source}" for n in _private(m.group(2))]
    return found


def test_no_private_name_is_imported_from_another_package():
    """``from convscope.pkg.mod import _name`` in another package reaches into its internals: a
    helper used across packages is public in the one module that owns it."""
    found = [f for p in MODULES for f in _private_imports(p)]
    assert not found, found
    assert _private("(a,\n    _b as c,  # why\n    __version__)") == ["_b"]  # the check sees them


def test_the_private_import_scan_sees_one(tmp_path, monkeypatch):
    pkg = SRC / "methods" / "attribution" / "cam.py"
    text = ("from convscope.models._sources import _is_none\n"
            "from convscope.methods.attribution._base import _x\n")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text)
    found = _private_imports(pkg)
    assert found == ["convscope.methods.attribution.cam: _is_none from convscope.models._sources"]


def test_the_registry_is_what_it_was_before_the_layout_moved():
    """Every method of the flat layout's registry (``tests/data/registry_before_layout.json``,
    written by ``tests/registry_snapshot.py`` at commit 0e3465d) is registered with the same
    metadata, signature and option specs; new methods may have been added since."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from registry_snapshot import snapshot
    finally:
        sys.path.pop(0)
    before = json.loads((Path(__file__).parent / "data" / "registry_before_layout.json").read_text())
    now = json.loads(json.dumps(snapshot()))
    assert set(before) <= set(now), sorted(set(before) - set(now))
    for name, info in before.items():
        assert _kept(info, now[name]), name


def _kept(before: object, now: object) -> bool:
    """``now`` holds everything ``before`` held, unchanged: dicts may gain keys (a field added with a
    default since), nothing else may differ."""
    if isinstance(before, dict):
        return isinstance(now, dict) and all(k in now and _kept(v, now[k]) for k, v in before.items())
    if isinstance(before, list):
        return isinstance(now, list) and len(before) == len(now) and all(map(_kept, before, now))
    return before == now


def test_the_snapshot_comparison_sees_a_change():
    assert _kept({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2, "c": 3}], "d": 4})
    assert not _kept({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]})
    assert not _kept({"a": [1, 2]}, {"a": [1]})
    assert not _kept({"a": 1}, {"b": 1})


def test_old_module_paths_import_the_moved_modules():
    from convscope.core.aliases import MOVED, new_path

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    assert new_path("convscope.attribution.cam") == "convscope.methods.attribution.cam"
    from convscope.attribution.cam import gradcam  # a submodule below an old package path

    from convscope.methods.attribution.cam import gradcam as moved

    assert gradcam is moved
    # the moved modules keep their own specs: importlib.resources still sees the packages
    from importlib import resources

    assert importlib.import_module("convscope.serve").__spec__.name == "convscope.frontends.serve"
    assert resources.files("convscope.frontends.serve").joinpath("static").is_dir()


def test_an_old_path_import_never_touches_the_real_module(monkeypatch):
    """Importing an old path must not write the alias's attributes onto the real module, even for a
    moment (another thread importing the real module would see the alias's spec): at the step where
    the alias is filled in, the real module still carries its own spec."""
    import sys

    from convscope.core import aliases

    real = importlib.import_module("convscope.methods.grids")
    own = real.__spec__
    seen = []
    exec_module = aliases._FINDER.exec_module

    def spy(module):
        seen.append((module is real, real.__spec__ is own))
        exec_module(module)

    monkeypatch.setattr(aliases._FINDER, "exec_module", spy)
    monkeypatch.delitem(sys.modules, "convscope.grids", raising=False)
    assert importlib.import_module("convscope.grids") is real
    assert seen == [(False, True)]
    assert real.__spec__ is own and real.__name__ == "convscope.methods.grids"


def test_an_old_path_import_keeps_a_function_of_the_same_name(monkeypatch):
    """``convscope.methods.dataset`` exports the function ``embed`` beside its module ``embed.py``:
    a first import of the old path ``convscope.dataset.embed`` gives the module, and the package's
    ``embed`` is still the function (the CLI imports it from there)."""
    import sys

    import convscope.methods.dataset as pkg

    function = pkg.embed
    assert callable(function) and not isinstance(function, type(sys))
    monkeypatch.delitem(sys.modules, "convscope.dataset.embed", raising=False)
    module = importlib.import_module("convscope.dataset.embed")
    assert module is sys.modules["convscope.methods.dataset.embed"]
    assert pkg.embed is function
    from convscope.methods.dataset import embed

    assert embed is function


def test_import_convscope_leaves_the_heavy_extras_unloaded():
    code = ("import sys, convscope; heavy = ['ray', 'fastapi', 'uvicorn', 'transformers', 'onnxruntime', "
            "'timm', 'zarr', 'zennit', 'captum', 'quantus']; print([m for m in heavy if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_old_submodules_are_attributes_of_the_package():
    """``import convscope as cs; cs.errors.InputError`` worked in the flat layout (the package imported
    its submodules); it still does, and an unknown name is still an AttributeError."""
    import convscope as cs

    assert cs.errors.InputError is importlib.import_module("convscope.core.errors").InputError
    assert cs.hooks is importlib.import_module("convscope.core.hooks")
    assert cs.attribution is importlib.import_module("convscope.methods.attribution")
    with pytest.raises(AttributeError):
        cs.no_such_thing  # noqa: B018


def test_every_module_of_the_flat_layout_still_imports():
    """Each module of the flat layout (``tests/data/modules_before_layout.txt``, from ``git ls-tree
    0e3465d``) imports at its old path, except the TCAV package ``convscope.concepts``, whose name
    is now the CRP function: importing it says in one line where it went."""
    from convscope.core.aliases import GONE

    old = (Path(__file__).parent / "data" / "modules_before_layout.txt").read_text().split()
    assert "convscope.api" in old and "convscope.attribution.cam" in old and len(old) > 100
    for name in old:
        if any(name == g or name.startswith(g + ".") for g in GONE):
            with pytest.raises(ImportError, match="moved to convscope.methods.tcav"):
                importlib.import_module(name)
        else:
            assert importlib.import_module(name).__name__.split(".")[0] == "convscope", name
    import convscope as cs

    assert callable(cs.concepts)  # the failed import of the old package left the function in place
