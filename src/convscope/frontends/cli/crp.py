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
                   atlas=args.atlas,
                   n_references=args.n_references, reference_limit=args.reference_limit,
                   batch_size=args.batch_size)
    res.save(out)
    print(f"{out}  {len(res.concepts)} concepts of {res.layer} for {res.target_name!r} "
          f"(layer relevance {res.layer_relevance:.3g} of score {res.score:.3g})")
    for c in res.concepts:
        print(f"  {c.name}: {c.share:.1%} of the relevance")
    return 0  # notes are warnings: the CLI prints each once, as one line


def cmd_atlas(args: argparse.Namespace) -> int:
    """the reference patches of every channel of a layer over a data set (a resumable job)

    For every image of --data, LRP (--composite) down to --layer gives each channel's relevance for
    the image's decision (--target: its predicted class, its label or a class index) and its
    activation; the atlas keeps per channel the --n images where it carries the most relevance and
    the --n where it is most active, each cut to the receptive field of the unit where it peaks.
    The job writes a Zarr store (-o); running the same command again resumes it. --save writes
    the atlas's picture (.png: one row per channel), .json or .html; `convscope concepts --atlas
    STORE` takes its reference patches from the store.
    """
    from convscope.frontends.cli.batch import job_options
    from convscope.methods.crp import concept_atlas

    saves = [check_out(p, (".png", ".json", ".html")) for p in args.save]
    target: Any = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    lm = load_from_args(args)
    atlas = concept_atlas(lm, args.data, args.layer, n=args.n, composite=args.composite, target=target,
                          out=args.output, progress=False if args.quiet else None, **job_options(args))
    for p in saves:
        atlas.save(p, channels=parse_channels(args.channels)) if p.suffix == ".png" else atlas.save(p)
    print(f"{atlas.path}  atlas of {atlas.layer}: {atlas.channels} channels x top {atlas.n} of "
          f"{atlas.n_images} images, complete" + "".join(f"; {p}" for p in saves))
    return 0


def add_commands(sub: Any) -> None:
    from convscope.frontends.cli.batch import add_job_args
    from convscope.methods.attribution.lrp import COMPOSITES

    a = add_command(sub, "atlas", cmd_atlas)
    add_model_args(a)
    a.add_argument("--data", "-d", default="digits",
                   help="digits | digits:test | digits:train | PATH to an image folder (default: digits)")
    a.add_argument("--layer", "-l", default=None, help="the layer whose channels are the concepts "
                   "(default: the model's default layer)")
    a.add_argument("--n", "-n", type=integer(1, 64, name="n"), default=8,
                   help="patches per channel, by relevance and by activation (8)")
    a.add_argument("--composite", choices=COMPOSITES, default="epsilon_plus_flat",
                   help="LRP composite (default epsilon_plus_flat)")
    a.add_argument("--target", "-t", default="pred",
                   help="the decision explained in each image: pred (its predicted class, default), label "
                   "(its label) or a class index")
    a.add_argument("--channels", default=None, help="channels the .png shows, e.g. 0-15 (default: the 16 "
                   "with the most relevance)")
    add_job_args(a)
    a.add_argument("-o", "--output", required=True, help="the store folder, e.g. atlas.zarr")
    a.add_argument("--save", action="append", default=[], metavar="FILE",
                   help="also write the atlas as .png, .json or .html (repeatable)")

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
    s.add_argument("--atlas", default=None, metavar="STORE",
                   help="take the reference patches from a concept atlas (convscope atlas -o STORE) of the "
                   "same model, layer and composite instead of computing them")
    s.add_argument("--n-references", type=integer(1, 64, name="n-references"), default=4,
                   help="reference patches per concept (4)")
    s.add_argument("--reference-limit", type=integer(1, name="reference-limit"), default=512,
                   help="use at most N images of --references (512)")
    s.add_argument("--batch-size", type=integer(1, name="batch-size"), default=16,
                   help="concepts (copies of the image) or reference images per pass (16)")
    s.add_argument("-o", "--output", required=True, help="result file: .png, .json, .npy or .html")
