"""Helpers shared by the command modules of the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = [
    "EXIT_USAGE",
    "Parser",
    "add_model_args",
    "load_from_args",
    "parse_options",
    "parse_target",
]

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2
        self.exit(EXIT_USAGE, f"convscope: error: {message} (see `{self.prog} --help`)\n")


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


