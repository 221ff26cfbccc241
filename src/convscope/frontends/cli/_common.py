"""Helpers shared by the command modules of the CLI."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from convscope.core.targets import parse_target

__all__ = [
    "EXIT_USAGE",
    "Parser",
    "ListAction",
    "add_command",
    "add_model_args",
    "add_trust_args",
    "emit_warnings",
    "finite_float",
    "integer",
    "load_from_args",
    "nonneg_float",
    "nonneg_int",
    "number_or",
    "parse_options",
    "parse_target",
    "positive_float",
    "positive_int",
    "recorded_warnings",
    "seed_int",
]

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2
        self.exit(EXIT_USAGE, f"convscope: error: {message} (see `{self.prog} --help`)\n")


#: suffixes of files a list flag's names never end with (images, folders of data, outputs)
_PATH_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy", ".pt",
                  ".json", ".csv", ".html", ".zarr")


class ListAction(argparse.Action):
    """The one spelling of list flags: values separated by spaces, commas or both
    (``--methods a b``, ``--methods a,b``, ``--methods a, b``), stored as one flat list of
    non-empty names. Add with ``nargs="+"``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = [values] if isinstance(values, str) else list(values)
        flat = [v.strip() for item in items for v in str(item).split(",") if v.strip()]
        if not flat:
            parser.error(f"{option_string} needs at least one name")
        # `--methods saliency a.png`: a list of registered names would swallow the images that follow
        for v in flat if self.dest in ("methods", "metrics") else ():
            if os.path.exists(v) or os.path.splitext(v)[1].lower() in _PATH_SUFFIXES:
                parser.error(f"{option_string}: {v!r} is a file, not a name; put the images before "
                             f"{option_string}")
        setattr(namespace, self.dest, flat)


class RangeType:
    """An argparse ``type=`` that parses a number and refuses values outside ``range``.

    ``range`` (a :class:`convscope.core.validate.Range`) is kept on the object, so the tests and the
    help can read what every numeric flag accepts; ``words`` are accepted as they are (e.g.
    ``auto``). The error names the value and the range, argparse adds the flag:
    ``convscope: error: argument --lr: got 'nan'; must be a finite number > 0``.
    """

    def __init__(self, range: Any, name: str, words: tuple[str, ...] = ()) -> None:
        self.range = range
        self.words = words
        self.__name__ = name  # argparse names the type in some messages

    def allowed(self) -> str:
        """What the flag accepts, in words."""
        return " or ".join([*self.words, self.range.describe()])

    def __call__(self, text: str) -> int | float | str:
        if text.lower() in self.words:
            return text.lower()
        shown = repr(text if len(text) <= 40 else text[:37] + "...")
        try:
            value: int | float = int(text) if self.range.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {shown}; must be {self.allowed()}") from None
        if not self.range.contains(value):
            raise argparse.ArgumentTypeError(f"got {shown}; must be {self.allowed()}")
        return value

    def __repr__(self) -> str:
        return f"{self.__name__}({self.allowed()})"


def integer(lo: int | None = None, hi: int | None = None, name: str = "integer") -> RangeType:
    """An integer in ``[lo, hi]`` (either bound optional)."""
    from convscope.core.validate import ints

    return RangeType(ints(lo, hi), name)


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, name: str = "finite_float") -> RangeType:
    """A finite number between ``lo`` and ``hi`` (NaN and infinities are refused)."""
    from convscope.core.validate import reals

    return RangeType(reals(lo, hi, lo_open=lo_open, hi_open=hi_open), name)


def number_or(num: RangeType, *words: str) -> RangeType:
    """``num``, or one of ``words`` (lower case) returned as it is."""
    return RangeType(num.range, "number_or", tuple(w.lower() for w in words))


#: the common cases; every numeric flag of the CLI uses one of these or the factories above.
positive_int = integer(1, name="positive_int")
nonneg_int = integer(0, name="nonneg_int")
positive_float = finite_float(0, lo_open=True, name="positive_float")
nonneg_float = finite_float(0, name="nonneg_float")
seed_int = integer(0, 2**32 - 1, name="seed_int")


def check_out(path: str, allowed: tuple[str, ...] = (".png", ".npy", ".json")) -> Path:
    """``-o PATH`` with one of the ``allowed`` suffixes, else a one-line error naming them."""
    from convscope.core.errors import InputError

    p = Path(path)
    if p.suffix.lower() not in allowed:
        names = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        raise InputError(f"-o {p}: give a {names} file name")
    return p


def parse_channels(spec: str | None) -> list[int] | None:
    """``--channels``: ``"0-3,7, 9"`` -> ``[0, 1, 2, 3, 7, 9]``; ``None`` or ``""`` -> ``None``.

    Raises:
        InputError: not indices and ascending ranges, or no channel at all.
    """
    from convscope.core.errors import InputError

    if not spec:
        return None
    out: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InputError(f"--channels {spec!r}: use indices and ranges like 0-3,7") from None
    if not out:
        raise InputError("--channels: no channel given")
    return out


def add_command(sub: Any, name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, run by ``func``: the first paragraph of ``func``'s docstring is
    its line in ``convscope --help``, the rest its description in ``convscope NAME --help``."""
    head, _, rest = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    s = sub.add_parser(name, help=" ".join(head.split()), description=" ".join(rest.split()) or None)
    s.set_defaults(func=func)
    return s


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="digits-cnn",
                   help="bundled name, torchvision:<arch>, timm:<name>, hf:<folder>, a model card "
                   "(.json/.yaml: your architecture, weights, preprocessing, classes) or a weights file "
                   "(default: digits-cnn)")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained when available; a card's own file), 'none' (random init, "
                   "seeded by --seed) or a file")
    p.add_argument("--arch", default=None,
                   help="architecture of a weights file given as --model: a spec (torchvision:resnet18) "
                   "or your own class as file.py:ClassName or package.module:ClassName")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow unpickling arbitrary objects from .pt files (trusted files only)")
    add_trust_args(p)
    p.add_argument("--model-output", default=None, metavar="NAME",
                   help="which output holds the class scores, for a model whose forward returns a dict, "
                   "tuple or object the rule cannot read (a key, an attribute or a tuple index; the rule: "
                   "a tensor, .logits, dict key 'logits' or its only tensor, a tuple's first 2-D tensor)")
    add_preprocessing_args(p)


def add_trust_args(p: argparse.ArgumentParser) -> None:
    """``--trust-card`` and ``--trust-remote-code``: the two opt-ins to run code a model brings."""
    p.add_argument("--trust-card", action="store_true",
                   help="run the Python file (file.py:Class) of a model card from outside the current "
                   "folder. A card is code, like a pickle: a card's file runs only if it lies in the "
                   "current folder, or with this flag once you have read it")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let an hf:<folder> run the Python code it ships (auto_map in its config); "
                   "refused without this flag, never asked")


def add_preprocessing_args(p: argparse.ArgumentParser) -> None:
    """The flags that state a model's preprocessing and class names (``preprocessing_from_args``)."""
    g = p.add_argument_group("preprocessing (what your model expects; recorded in every output)")
    g.add_argument("--preprocessing", default=None, metavar="PRESET",
                   help="imagenet (224 crop after resize 256, ImageNet mean/std), none (pixels in [0, 1] "
                   "as they are), inception or clip; the flags below override its parts")
    g.add_argument("--input-size", default=None, metavar="N|HxW",
                   help="the model's input size, e.g. 48 or 48x64")
    g.add_argument("--mean", default=None, metavar="M[,M,M]",
                   help="per-channel mean, e.g. 0.5,0.5,0.5 (one value without --input-channels: a "
                   "one-channel model)")
    g.add_argument("--std", default=None, metavar="S[,S,S]", help="per-channel std, e.g. 0.25,0.25,0.25")
    g.add_argument("--resize", default=None, metavar="N|none",
                   help="shorter side before the centre crop; 'none' resizes straight to --input-size")
    g.add_argument("--input-channels", default=None, choices=("1", "3"),
                   help="1 (grayscale) or 3 (RGB) model input")
    g.add_argument("--classes", default=None, metavar="FILE",
                   help="class names: one per line, or a JSON list")


def _floats(name: str, value: str) -> tuple[float, ...]:
    import math

    from convscope.core.errors import InputError

    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"--{name} takes numbers separated by commas, got {value!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"--{name} must be finite numbers, got {value!r}")
    return vals


def preprocessing_from_args(args: argparse.Namespace) -> Any:
    """The preprocessing the user stated with --preprocessing/--size/..., or ``None``."""
    from convscope.core.errors import InputError
    from convscope.models.preprocessing import preprocessing_from

    names = {"preprocessing": "preprocessing", "size": "input_size", "mean": "mean", "std": "std",
             "resize": "resize", "channels": "input_channels"}
    given = {n: getattr(args, d, None) for n, d in names.items()}
    if all(v is None for v in given.values()):
        return None
    over: dict[str, Any] = {}
    if given["size"] is not None:
        over["size"] = given["size"]
    for n in ("mean", "std"):
        if given[n] is not None:
            over[n] = _floats(n, given[n])
    if given["channels"] is not None:
        over["channels"] = int(given["channels"])
    r = given["resize"]
    if r is not None:
        if r.lower() == "none":
            over["resize"] = "none"
        elif r.isdigit():
            over["resize"] = int(r)
        else:
            raise InputError(f"--resize takes a whole number of pixels or 'none', got {r!r}")
    preset = given["preprocessing"]
    if preset is None and "size" not in over and not str(getattr(args, "model", "")).endswith(
            (".json", ".yaml", ".yml")):
        raise InputError("state the input size with --input-size (or name a preset with --preprocessing)")
    if preset is None:
        preset = "none"
    for n in ("mean", "std"):  # one value for every channel, else one per channel
        if n in over and len(over[n]) not in (1, over.get("channels", 3)):
            raise InputError(
                f"--{n} takes one value or one per channel ({over.get('channels', 3)}), got {len(over[n])}"
            )
    return preprocessing_from(preset, **over)


def load_from_args(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from convscope.core.errors import InputError
    from convscope.models import load_model
    from convscope.models.card import read_labels

    weights = None if str(args.weights).lower() == "none" else args.weights
    pre = preprocessing_from_args(args)
    names = None
    if getattr(args, "classes", None):
        path = Path(args.classes)
        if not path.is_file():
            raise InputError(f"--classes: file not found: {path}")
        names = read_labels(path)
    seed = getattr(args, "seed", 0)
    return load_model(args.model, weights=weights, arch=args.arch, unsafe=args.unsafe_load,
                      preprocessing=pre, class_names=names, seed=int(seed) if isinstance(seed, int) else 0,
                      output=getattr(args, "model_output", None),
                      trust_card=bool(getattr(args, "trust_card", False)),
                      trust_remote_code=bool(getattr(args, "trust_remote_code", False)))


def parse_options(items: Sequence[str]) -> list[tuple[str, Any]]:
    import json

    from convscope.core.errors import InputError

    pairs = []
    for it in items:
        if "=" not in it:
            raise InputError(f"--option {it!r}: use NAME=VALUE")
        k, v = it.split("=", 1)
        try:
            val: Any = json.loads(v)
        except ValueError:
            val = v
        pairs.append((k.strip().replace("-", "_"), val))
    return pairs




@contextmanager
def recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings of a block (convscope's own every time) for :func:`emit_warnings`."""
    from convscope.core.errors import ConvscopeWarning

    with warnings.catch_warnings(record=True) as caught:
        # convscope's own warnings (assumed, unreliable, code that runs) every time; a CodeWarning
        # is said once per file by convscope itself
        warnings.simplefilter("always", ConvscopeWarning)
        yield caught


def emit_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    """What convscope assumed or ran: one line each on stderr, no source line; others as Python
    shows them. Each warning is shown once, however often it was raised (a model's forward pass
    that warns runs many times).

    Call it once the recording block (:func:`recorded_warnings`) has exited. The lines are written
    to stderr directly, never through ``warnings.showwarning``: inside a recording block that would
    append each re-emitted warning to the list being read, an endless loop that ate all memory
    (issue #27).
    """
    from convscope.core.errors import ConvscopeWarning

    seen: set[tuple[str, type, str, int]] = set()
    for w in caught:
        key = (str(w.message), w.category, str(w.filename), int(w.lineno or 0))
        if key in seen:
            continue
        seen.add(key)
        if issubclass(w.category, ConvscopeWarning):
            print(f"convscope: warning: {w.message}", file=sys.stderr)
        else:
            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    sys.stderr.flush()
