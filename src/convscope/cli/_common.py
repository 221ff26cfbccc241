"""Helpers shared by the command modules of the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = [
    "EXIT_USAGE",
    "Parser",
    "add_model_args",
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
    "seed_int",
]

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2
        self.exit(EXIT_USAGE, f"convscope: error: {message} (see `{self.prog} --help`)\n")


class RangeType:
    """An argparse ``type=`` that parses a number and refuses values outside ``range``.

    ``range`` (a :class:`convscope._validate.Range`) is kept on the object, so the tests and the
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
    from .._validate import ints

    return RangeType(ints(lo, hi), name)


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, name: str = "finite_float") -> RangeType:
    """A finite number between ``lo`` and ``hi`` (NaN and infinities are refused)."""
    from .._validate import reals

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


def parse_target(value: str | None) -> Any:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="digits-cnn",
                   help="bundled name, torchvision:<arch>, timm:<name> or a weights file "
                   "(default: digits-cnn)")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained when available), 'none' (random init) or a file")
    p.add_argument("--arch", default=None, help="architecture of a weights file given as --model")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow unpickling arbitrary objects from .pt files (trusted files only)")


def load_from_args(args: argparse.Namespace) -> Any:
    from ..models import load_model

    weights = None if str(args.weights).lower() == "none" else args.weights
    return load_model(args.model, weights=weights, arch=args.arch, unsafe=args.unsafe_load)



def parse_options(items: Sequence[str]) -> list[tuple[str, Any]]:
    import json

    from ..errors import InputError

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


