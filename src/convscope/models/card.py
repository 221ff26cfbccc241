"""Model cards: your own architecture, weights, preprocessing and class names in one file.

A card is a JSON or YAML file (``.json``, ``.yaml``, ``.yml``)::

    {
      "architecture": "net.py:WolfNet",          # a file next to the card, or "package.module:Class",
                                                 # or a spec: "torchvision:resnet18", "timm:<name>",
                                                 # "hf:<folder>" (a Hugging Face save_pretrained folder:
                                                 # its weights, preprocessing, class names and layer,
                                                 # unless the card states them)
      "kwargs": {"num_classes": 2},              # constructor keyword arguments (optional)
      "weights": "wolfnet.safetensors",          # safetensors or a state-dict .pt (optional: random
                                                 # init, seeded by "seed", default 0)
      "preprocessing": "none",                   # a preset, or {"size": .., "mean": .., "std": ..,
                                                 # "resize": .., "channels": ..}
      "input_size": [48, 48],                    # flat keys override the preprocessing's
      "mean": [0, 0, 0], "std": [1, 1, 1], "resize": null,
      "class_names": ["wolf", "husky"],          # or "labels": "labels.txt" (one name a line, or JSON)
      "layer": "conv3",                          # default layer for CAMs (optional)
      "output": "logits"                         # which output holds the class scores, when the
                                                 # model's output is not a tensor and the rule of
                                                 # convscope.models.outputs cannot tell (optional)
    }

Paths are relative to the card's folder. Weights load without unpickling (safetensors, or
``torch.load(weights_only=True)``). A card is code, like a pickle: a ``"file.py:Class"`` card runs
that file, only if it lies inside the current working directory or with ``trust_card=True``
(``--trust-card``), said once per file (:class:`~convscope.core.errors.CodeWarning`); a
``"package.module:Name"`` must name an ``nn.Module`` subclass or a :func:`model_factory` function,
checked before anything is called (:func:`import_architecture`). The card must state the
preprocessing (a preset or at least ``input_size``; an ``hf:`` architecture brings its own): a card
is where a user says what their model expects, so nothing is assumed.
Other keys (``name``, ``summary``, ``data``, ``metrics``, ...) are kept as the card's metadata;
a key that looks like a misspelt known key is refused.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from convscope.core.errors import CodeWarning, ModelLoadError

__all__ = ["CARD_KEYS", "CARD_SUFFIXES", "import_architecture", "is_card_path", "model_factory", "read_card"]

F = TypeVar("F", bound=Callable[..., Any])

CARD_SUFFIXES = (".json", ".yaml", ".yml")
CARD_KEYS = ("architecture", "kwargs", "weights", "preprocessing", "input_size", "size", "mean",
             "std", "resize", "resample", "channels", "class_names", "labels", "layer", "default_layer",
             "seed", "output")
_META_KEYS = ("name", "summary", "data", "split", "training", "cue", "metrics", "description",
              "license", "source", "notes")


def is_card_path(spec: str) -> bool:
    """Whether ``spec`` names a model card file (by its suffix)."""
    return Path(spec).suffix.lower() in CARD_SUFFIXES


def read_card(path: str | Path) -> dict[str, Any]:
    """Parse a card file and check its keys; paths stay as written (see :func:`card_path`).

    Raises:
        ModelLoadError: missing file, unparsable file, not a mapping, no ``architecture``, a
            misspelt key, a wrongly typed value. The message names the key and what to do.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model card not found: {p}")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        if p.suffix.lower() == ".json":
            card = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:  # pragma: no cover - pyyaml is a dependency
                raise ModelLoadError("reading a YAML card needs pyyaml: pip install pyyaml") from None
            card = yaml.safe_load(text)
    except ModelLoadError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"model card {p} is not valid {p.suffix[1:].upper()}: {first}") from None
    if not isinstance(card, dict):
        raise ModelLoadError(f"model card {p} must be a mapping of keys to values, got {type(card).__name__}")
    for key in card:
        if key in CARD_KEYS or key in _META_KEYS:
            continue
        close = difflib.get_close_matches(str(key), CARD_KEYS, n=1, cutoff=0.75)
        if close:
            raise ModelLoadError(f"model card {p}: unknown key {key!r}; did you mean {close[0]!r}?")
    if "architecture" not in card:
        raise ModelLoadError(
            f"model card {p}: missing key 'architecture' (e.g. \"net.py:MyNet\", "
            "\"mypackage.models:MyNet\" or \"torchvision:resnet18\")"
        )
    checks = {"architecture": str, "kwargs": dict, "weights": str, "labels": str, "layer": str,
              "default_layer": str, "class_names": list, "output": str}
    for key, typ in checks.items():
        if key in card and card[key] is not None and not isinstance(card[key], typ):
            raise ModelLoadError(
                f"model card {p}: key {key!r} must be a {typ.__name__}, got {type(card[key]).__name__}"
            )
    if "class_names" in card and "labels" in card:
        raise ModelLoadError(f"model card {p}: give class_names or labels, not both")
    return card


def card_path(card_file: Path, value: str, key: str) -> Path:
    """A path named in a card, relative to the card's folder; must exist."""
    q = Path(value).expanduser()
    if not q.is_absolute():
        q = card_file.parent / q
    if not q.exists():
        raise ModelLoadError(f"model card {card_file}: {key} file not found: {q}")
    return q


def read_labels(path: Path) -> list[str]:
    """Class names from a labels file: a JSON list (or {index: name}), else one name a line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, list):
        return [str(v) for v in obj]
    if isinstance(obj, dict):
        try:
            keys = sorted(obj, key=lambda k: int(k))
            if [int(k) for k in keys] != list(range(len(keys))):
                raise ModelLoadError(
                    f"labels file {path}: indices must be 0..{len(keys) - 1} with none missing, got "
                    f"{', '.join(map(str, keys))}"
                )
            return [str(obj[k]) for k in keys]
        except ValueError:
            raise ModelLoadError(
                f"labels file {path}: a JSON object must map class indices to names"
            ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelLoadError(f"labels file {path} holds no class names (one name a line)")
    return names


#: the attribute :func:`model_factory` sets on a function
FACTORY_MARK = "__convscope_model_factory__"
_ANNOUNCED: set[str] = set()  # files whose running was said, once per process


def model_factory(func: F) -> F:
    """Mark ``func`` as a function that builds a model, so a model card may name it.

    A card's ``"package.module:name"`` architecture must be an ``nn.Module`` subclass or a function
    marked so (``@convscope.model_factory``); anything else (``os:system``, ``subprocess:run``, a
    builder from another library) is refused before it is called. A function defined in the card's
    own ``file.py`` needs no mark (that file is the user's code, run on purpose).

    Returns:
        ``func`` itself, marked.
    """
    setattr(func, FACTORY_MARK, True)
    return func


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in the project ``folder`` (the current one): anywhere below it, or,
    where the folder is the home folder, the file system's root or a folder above home (where a
    terminal starts, and downloads sit below), only directly in it."""
    path, folder = path.resolve(), folder.resolve()
    home = Path.home().resolve()
    if folder == home or folder in home.parents or folder == Path(folder.anchor):
        return path.parent == folder
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _run_file(path: Path, trust: bool, card: Path | None) -> tuple[Any, str]:
    """Import the Python file ``path`` as a module of its own: (module, its name in ``sys.modules``).

    A file that a card names runs only if it lies inside the current working directory (the
    user's project) or ``trust`` is given; the first time a file runs in this process a
    :class:`~convscope.core.errors.CodeWarning` says so.
    """
    if card is not None and not trust and not _inside(path, Path.cwd()):
        raise ModelLoadError(
            f"model card {card} runs the Python file {path}, which is outside the current folder "
            f"{Path.cwd()}; a card is code, like a pickle: read it, then pass trust_card=True "
            "(--trust-card) to run it, or copy the model into your project"
        )
    key = str(path.resolve())
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        by = f"model card {card} names it" if card is not None else "arch= names it"
        warnings.warn(f"running {path} ({by}): a model's Python file is code, like a pickle; use only "
                      "cards and files you trust", CodeWarning, stacklevel=2)
    mod_name = f"_convscope_user_{abs(hash(key))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        try:
            sys.path.remove(str(path.parent))
        except ValueError:  # pragma: no cover
            pass
    return module, mod_name


def import_architecture(ref: str, base: Path | None = None, *, trust: bool = False,
                        card: Path | None = None) -> Callable[..., nn.Module]:
    """The model class (or marked factory) named by ``"file.py:Name"`` or ``"package.module:Name"``.

    Nothing named is called here, and it is checked before anyone calls it: it must be an
    ``nn.Module`` subclass, a function marked with :func:`model_factory`, or a function defined in
    the named ``file.py`` itself. A module of the standard library is refused without importing it
    (it holds no models; ``os:system`` and ``subprocess:run`` are how a card would run commands).

    A file path is relative to ``base`` (a card's folder); it is imported as a module of its own
    (its folder is put on ``sys.path`` while it loads, so it can import its neighbours).

    Args:
        ref: ``"file.py:Name"`` or ``"package.module:Name"``.
        base: the folder a relative file path starts from.
        trust: run a file that ``card`` names even when it lies outside the current folder.
        card: the card that names ``ref`` (``None``: the user named it, e.g. ``--arch``, and it
            runs wherever it is).

    Raises:
        ModelLoadError: the file or module is missing, fails to import, lies outside the current
            folder without ``trust``, has no such name, or names something that is not a model.
    """
    if ":" not in ref:
        raise ModelLoadError(
            f"architecture {ref!r} must be \"file.py:ClassName\" or \"package.module:ClassName\""
        )
    mod_ref, _, name = ref.rpartition(":")
    own: str | None = None  # the module name of the card's own file: its functions need no mark
    if mod_ref.endswith(".py") or "/" in mod_ref or "\\" in mod_ref:
        path = Path(mod_ref).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise ModelLoadError(f"architecture file not found: {path}")
        module, own = _run_file(path.resolve(), trust, card)
        where = str(path)
    else:
        parts = mod_ref.split(".")
        if any(not p.isidentifier() or p.startswith("_") for p in parts) or name.startswith("_"):
            raise ModelLoadError(  # `pkg.__main__` runs a program on import: refused unimported
                f"architecture {ref!r} names a private or __main__ module or name; name your public "
                "nn.Module class (\"package.module:ClassName\" or \"file.py:ClassName\")"
            )
        top = parts[0]
        if top in sys.stdlib_module_names or top == "builtins":
            raise ModelLoadError(
                f"architecture {ref!r} names the standard library, which holds no models; name your "
                "nn.Module class (\"package.module:ClassName\" or \"file.py:ClassName\")"
            )
        try:
            module = importlib.import_module(mod_ref)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot import module {mod_ref!r} ({type(exc).__name__}: {exc}); install it or put "
                "its folder on PYTHONPATH, or name a file: \"path/to/file.py:ClassName\""
            ) from None
        where = mod_ref
    obj = getattr(module, name, None) if name.isidentifier() else None
    if obj is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"{where} has no {name!r}{hint}")
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return obj
    if inspect.isfunction(obj) and (getattr(obj, FACTORY_MARK, False) or obj.__module__ == own):
        return obj
    what = "class" if isinstance(obj, type) else type(obj).__name__
    raise ModelLoadError(
        f"{where}:{name} is a {what} that is not a torch nn.Module subclass; a card's architecture "
        "names a model class, or a function marked @convscope.model_factory (refused before any call)"
    )
