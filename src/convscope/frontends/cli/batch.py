"""CLI: ``convscope batch``: an explain method over a data set into a resumable Zarr store."""

from __future__ import annotations

import argparse
from typing import Any

from convscope.core.progress import Progress
from convscope.frontends.cli._common import (
    add_command,
    add_model_args,
    load_from_args,
    nonneg_int,
    parse_options,
    parse_target,
    positive_int,
    seed_int,
)

__all__ = ["add_commands", "add_job_args", "job_options"]


def add_job_args(s: argparse.ArgumentParser) -> None:
    """The batch-job flags that ``convscope batch`` and ``convscope audit`` share: batch and chunk
    size, seed, limit, engine (local or Ray) and its workers, device and overwrite/quiet."""
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--chunk-size", type=positive_int, default=128,
                   help="images per store chunk (default 128)")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    s.add_argument("--engine", choices=["local", "ray"], default="local")
    s.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader worker processes (local engine)")
    s.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or mps, checked first (default: where the model is); with "
                   "cuda, Ray gives each actor one GPU")
    s.add_argument("--ray-address", default=None, help="Ray cluster address (default: local / RAY_ADDRESS)")
    s.add_argument("--slots", type=positive_int, default=None,
                   help="Ray actors (default: one per CPU or GPU)")
    s.add_argument("--overwrite", action="store_true", help="replace a store made by a different job")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`convscope.methods.jobs.run_batch` (and ``audit``) that
    :func:`add_job_args` parsed (progress is the caller's)."""
    return dict(batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed, limit=args.limit,
                engine=args.engine, num_workers=args.workers, device=args.device,
                ray_address=args.ray_address, slots=args.slots, overwrite=args.overwrite)


def cmd_batch(args: argparse.Namespace) -> int:
    """run an explain method over a data set into a resumable Zarr store

    Running the same command again resumes the job: finished chunks are kept if their data still
    match the checksum in their marker and their image files are unchanged; the rest are computed.
    --verify only checks the store at -o and computes nothing.
    """
    from convscope.methods.jobs import run_batch

    if args.verify:
        return _verify(args.output)
    lm = load_from_args(args)
    target: Any = args.target if args.target == "label" else parse_target(args.target)

    bar: list[Progress] = []  # made at the first report, when the number of chunks is known

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress("batch: chunks", total, enabled=False if args.quiet else None,
                                unit="chunks"))
        bar[0].update(done)

    store = run_batch(
        lm,
        args.data,
        args.method,
        args.output,
        target=target,
        layer=args.layer,
        options=dict(parse_options(args.option)),
        progress=progress,
        **job_options(args),
    )
    if bar:
        bar[0].close()
    print(f"{store.path}  {args.method} on {store.size} images, {store.n_chunks} chunks, complete")
    return 0


def _verify(path: str) -> int:
    """``convscope batch -o OUT --verify``: check every finished chunk; one line, exit 2 on failure."""
    from convscope.methods.jobs.store import open_store

    store = open_store(path)
    store.check()
    done = len(store.done_chunks())
    state = "complete" if store.complete else f"unfinished ({done}/{store.n_chunks} chunks)"
    print(f"{store.path}  {done} chunks match their checksums and inputs; job {state}")
    return 0


def add_commands(sub: Any) -> None:
    from convscope.methods.registry import method_names

    s = add_command(sub, "batch", cmd_batch)
    add_model_args(s)
    s.add_argument(
        "--data",
        "-d",
        default="digits",
        help="digits | digits:test | digits:train | PATH to an image folder (default: digits)",
    )
    s.add_argument(
        "--method",
        default="saliency",
        choices=method_names(),
        metavar="METHOD",
        help="one of: " + ", ".join(method_names()),
    )
    s.add_argument(
        "--target",
        "-t",
        default=None,
        help="class index or name, 'label' (each image's label); default: predicted class",
    )
    s.add_argument("--layer", "-l", default=None, help="layer for layer methods (default: model's)")
    s.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="method option, repeatable"
    )
    add_job_args(s)
    s.add_argument("-o", "--output", required=True, help="output store folder, e.g. maps.zarr")
    s.add_argument("--verify", action="store_true",
                   help="only check the store at -o: every finished chunk against the checksum in its "
                   "marker and its image files against their contents; computes nothing (a failing chunk "
                   "is named, exit status 2; run without --verify to recompute it)")
