"""CLI: ``convscope top-activations``, ``convscope neighbors``, ``convscope embed``.

Each command computes everything first and writes its output atomically at the end; user errors
print one line and exit 2 (see :mod:`convscope.frontends.cli.main`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convscope.frontends.cli._common import (
    add_command,
    add_model_args,
    check_out,
    load_from_args,
    nonneg_int,
    parse_channels,
    positive_int,
    seed_int,
)

__all__ = ["add_commands"]


def _data_args(s: argparse.ArgumentParser) -> None:
    add_model_args(s)
    s.add_argument(
        "--data",
        "-d",
        default="digits",
        help="digits | digits:test | digits:train | PATH to an image folder (class sub-folders "
        "give labels); default: digits",
    )
    s.add_argument("--layer", "-l", required=True, help="layer name (see `convscope layers MODEL`)")
    s.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader worker processes reading images")


def _data_kw(args: argparse.Namespace) -> dict[str, Any]:
    """How the data set is read (the options of :func:`_data_args`), as keyword arguments."""
    return dict(batch_size=args.batch_size, num_workers=args.workers, limit=args.limit)


def cmd_top(args: argparse.Namespace) -> int:
    """most activating images per channel, as receptive-field patches"""
    from convscope.methods.dataset import top_activations

    out = check_out(args.output, (".png", ".json"))
    chans = parse_channels(args.channels)
    lm = load_from_args(args)
    res = top_activations(lm, args.data, args.layer, k=args.k, **_data_kw(args))
    if chans is not None:
        res.grid(chans)  # validate before writing
    res.save(out, chans, style=args.style)
    rf = res.receptive_field
    what = f"receptive field {rf.size[0]}x{rf.size[1]} px" if rf else "whole images"
    print(
        f"{out}  top {args.k} of {res.channels} channels at {res.layer} "
        f"over {len(res.source)} images ({what})"
    )
    return 0


def _query(value: str) -> Any:
    from convscope.core.errors import InputError

    if value.startswith("#") and not Path(value).exists():
        try:
            return int(value[1:])  # range-checked against the data set's size by nearest_neighbors
        except ValueError:
            raise InputError(f"query {value!r}: write #N for image N of the data set (0..N-1)") from None
    if value.isdigit() and not Path(value).exists():
        return int(value)
    return value


def cmd_neighbors(args: argparse.Namespace) -> int:
    """nearest images to a query in a layer's feature space"""
    from convscope.methods.dataset import nearest_neighbors

    out = check_out(args.output, (".png", ".json"))
    lm = load_from_args(args)
    res = nearest_neighbors(lm, args.data, _query(args.query), args.layer, k=args.k, metric=args.metric,
                            pool=args.pool, **_data_kw(args))
    res.save(out)
    print(f"{out}  {len(res.indices)} nearest by {res.metric} at {res.layer}: images {res.indices.tolist()}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """PCA / t-SNE / UMAP map of a layer's features"""
    from convscope.methods.dataset import embed

    out = check_out(args.output, (".png", ".json", ".npy"))
    lm = load_from_args(args)
    res = embed(lm, args.data, args.layer, method=args.method, pool=args.pool, seed=args.seed,
                **_data_kw(args))
    res.save(out, kind=args.kind)
    print(f"{out}  {args.method} map of {len(res.coords)} images at {res.layer}")
    return 0


def add_commands(sub: Any) -> None:
    s = add_command(sub, "top-activations", cmd_top)
    _data_args(s)
    s.add_argument("-k", type=positive_int, default=8, help="images per channel (default 8)")
    s.add_argument("--channels", default=None, help="channels to show, e.g. 0-7,12 (default: first 16 live)")
    s.add_argument(
        "--style",
        choices=["patch", "image"],
        default="patch",
        help="patch: the receptive-field patches; image: whole images with the field outlined",
    )
    s.add_argument("-o", "--output", required=True, help="output .png grid or .json")

    s = add_command(sub, "neighbors", cmd_neighbors)
    s.add_argument("query", help="an image file, or #N for image N of the data set")
    _data_args(s)
    s.add_argument("-k", type=positive_int, default=8)
    s.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    s.add_argument("--pool", choices=["avg", "max"], default="avg", help="pooling over positions")
    s.add_argument("-o", "--output", required=True, help="output .png grid or .json")

    s = add_command(sub, "embed", cmd_embed)
    _data_args(s)
    s.add_argument("--method", choices=["pca", "tsne", "umap"], default="pca")
    s.add_argument(
        "--kind",
        choices=["scatter", "thumbnails"],
        default="scatter",
        help="scatter coloured by class, or image thumbnails at their positions",
    )
    s.add_argument("--pool", choices=["avg", "max"], default="avg")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("-o", "--output", required=True, help="output .png, .json or .npy (coordinates)")
