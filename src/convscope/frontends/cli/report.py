"""``convscope report IMAGE... --model M [--methods ...] -o report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    ListAction,
    add_command,
    add_model_args,
    load_from_args,
    nonneg_int,
    parse_target,
    positive_int,
    seed_int,
)

__all__ = ["add_commands", "cmd_report"]


def _featvis_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("convscope.methods.featvis") is not None


def cmd_report(args: argparse.Namespace) -> int:
    """one self-contained HTML report: predictions and every chosen method per image

    Explain images with several methods and write one self-contained HTML file (images embedded,
    no network needed to view it).
    """
    from convscope.core.errors import InputError
    from convscope.frontends.report import explain_report
    from convscope.frontends.report.build import resolve_methods

    out = Path(args.output)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"-o {out}: give an .html file name")
    resolve_methods(args.methods)  # unknown names fail before any model is loaded
    lm = load_from_args(args)
    if args.layer is not None:  # a wrong name fails here, naming close ones, not as error panels
        from convscope.core.hooks import resolve_layers

        resolve_layers(lm.model, args.layer)
    extra: list[Any] = []
    if getattr(args, "class_vis", None) is not None or getattr(args, "channels", None) or getattr(
        args, "filters", False
    ):
        from convscope.frontends.report import featvis_sections

        extra = featvis_sections.section_builders(
            class_vis=args.class_vis, channels=args.channels, filters=args.filters, seed=args.seed
        )
    rep = explain_report(
        lm,
        args.images,
        methods=args.methods,
        target=parse_target(args.target),
        topk=args.topk,
        layer=args.layer,
        fast=args.fast,
        batch_size=args.batch_size,
        seed=args.seed,
        labels=[Path(p).name for p in args.images],
        title=args.title,
        extra_sections=extra,
        progress=False if args.quiet else None,
        compare=args.compare,
        compare_method=args.compare_method,
    )
    path = rep.write(out)
    print(f"report written to {path.resolve()}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``convscope report`` to the CLI."""
    from convscope.methods.registry import method_names

    s = add_command(sub, "report", cmd_report)
    s.add_argument("images", nargs="+", help="image files")
    add_model_args(s)
    s.add_argument("--methods", nargs="+", action=ListAction, default=None, metavar="METHOD",
                   help="method names, family names (gradient, cam, perturbation) or 'all', separated by "
                   "spaces or commas "
                   "(default: all; `convscope methods` lists them)")
    s.add_argument("--target", "-t", default=None,
                   help="class index or name to explain (default: each image's predicted class)")
    s.add_argument("--topk", type=positive_int, default=None,
                   help="class probabilities shown per image (default 5, or every class of a model with "
                   "fewer; more than the model's classes is an error)")
    s.add_argument("--compare", type=nonneg_int, default=0, metavar="K",
                   help="also explain each image's K most probable classes side by side on one colour "
                   "scale (default 0: no)")
    s.add_argument("--compare-method", default="gradcam", choices=method_names(), metavar="METHOD",
                   help="method of the class comparison (default gradcam)")
    s.add_argument("--layer", "-l", default=None,
                   help="layer for the methods that need one (default: the model's)")
    s.add_argument("--fast", action="store_true",
                   help="use each method's cheap settings (fewer samples/steps); noted in the report")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--title", default=None, help="report title")
    s.add_argument("--quiet", "-q", action="store_true",
                   help="no progress on stderr (default: a bar on a terminal, a line every 10 s elsewhere)")
    if _featvis_available():
        s.add_argument("--class-vis", nargs="*", default=None, metavar="CLASS",
                       help="add class visualisations (no CLASS: every class of a model with at most 16)")
        s.add_argument("--channels", default=None, metavar="LAYER",
                       help="add a gallery of channel visualisations of LAYER")
        s.add_argument("--filters", action="store_true", help="add the first-layer filters")
    s.add_argument("-o", "--output", required=True, help="output .html file")
