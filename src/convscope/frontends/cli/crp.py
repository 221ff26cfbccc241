"""CLI: ``convscope concepts``: the concepts (channels) of a layer behind one decision (CRP on LRP)."""

from __future__ import annotations

import argparse
from typing import Any

from convscope.frontends.cli._common import (
    add_command,
    add_model_args,
    check_out,
    integer,
    load_from_args,
    parse_channels,
)

__all__ = ["add_commands"]


def _groups(items: list[str] | None) -> dict[str, list[int]] | None:
    from convscope.core.errors import InputError

    if not items:
        return None
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, chans = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--group {item!r}: use NAME=CHANNELS, e.g. snow=3,17-19")
        if name.strip() in out:
            raise InputError(f"--group {name.strip()!r} is given twice")
        out[name.strip()] = parse_channels(chans) or []
    return out


def cmd_concepts(args: argparse.Namespace) -> int:
    """the channels of a layer with the most relevance for one decision, where they sit, what they show

    Concept relevance propagation (CRP, on zennit's LRP): the --k channels (or --group channel sets)
    of --layer with the most LRP relevance for the target, each with its share of the layer's
    relevance and its conditional heatmap (its relevance propagated to the input), computed in
    batched backward passes; with --references DATA, each concept's reference patches: where in
    the data set it carries the most relevance for the same class, and where it is most active.
    Writes -o as .png, .json, .npy (the heatmaps) or .html; prints one line per concept.
    """
    from convscope.core.errors import MethodError
    from convscope.core.targets import parse_target
    from convscope.methods.attribution.lrp import COMPOSITES
    from convscope.methods.crp import concepts

    out = check_out(args.output, (".png", ".json", ".npy", ".html"))
    if args.composite not in COMPOSITES:  # argparse's choices say it too; kept for the API's words
        raise MethodError(f"unknown LRP composite {args.composite!r}; use one of {', '.join(COMPOSITES)}")
    groups = _groups(args.group)
    channels = parse_channels(args.channels)
    lm = load_from_args(args)
    res = concepts(lm, args.image, target=parse_target(args.target), layer=args.layer, k=args.k,
                   channels=channels, groups=groups, composite=args.composite, references=args.references,
                   n_references=args.n_references, reference_limit=args.reference_limit,
                   batch_size=args.batch_size)
    res.save(out)
    print(f"{out}  {len(res.concepts)} concepts of {res.layer} for {res.target_name!r} "
          f"(layer relevance {res.layer_relevance:.3g} of score {res.score:.3g})")
    for c in res.concepts:
        print(f"  {c.name}: {c.share:.1%} of the relevance")
    return 0  # notes are warnings: the CLI prints each once, as one line


def add_commands(sub: Any) -> None:
    from convscope.methods.attribution.lrp import COMPOSITES

    s = add_command(sub, "concepts", cmd_concepts)
    add_model_args(s)
    s.add_argument("image", help="the image file")
    s.add_argument("--layer", "-l", default=None, help="the layer whose channels are the concepts "
                   "(default: the model's default layer; see `convscope layers MODEL`)")
    s.add_argument("--target", "-t", default=None, help="class index or name, or a contrast a-vs-b "
                   "(default: the predicted class)")
    s.add_argument("--k", type=integer(1, name="k"), default=6, help="concepts to show (6)")
    s.add_argument("--channels", default=None, help="candidate channels, e.g. 0-15,40 (default: all)")
    s.add_argument("--group", action="append", default=None, metavar="NAME=CHANNELS",
                   help="a named concept made of several channels (repeat for more), e.g. snow=3,17-19; "
                   "replaces the single channels")
    s.add_argument("--composite", choices=COMPOSITES, default="epsilon_plus_flat",
                   help="LRP composite (default epsilon_plus_flat)")
    s.add_argument("--references", default=None, metavar="DATA",
                   help="data set for reference patches: digits:test or an image folder (default: none)")
    s.add_argument("--n-references", type=integer(1, 64, name="n-references"), default=4,
                   help="reference patches per concept (4)")
    s.add_argument("--reference-limit", type=integer(1, name="reference-limit"), default=512,
                   help="use at most N images of --references (512)")
    s.add_argument("--batch-size", type=integer(1, name="batch-size"), default=16,
                   help="concepts (copies of the image) or reference images per pass (16)")
    s.add_argument("-o", "--output", required=True, help="result file: .png, .json, .npy or .html")
