"""The chunked-job engine shared by :func:`~convscope.methods.jobs.run_batch` and the concept atlas
(:func:`convscope.methods.crp.concept_atlas`): open or create the job's store, run its pending chunks
locally or on Ray, mark it complete.

A job is any object with what :class:`~convscope.methods.jobs.batch.BatchJob` has: ``source`` (a
data source), ``batches(chunk)`` (the image rows of a chunk, batch by batch), ``compute(x, labels)``
(one batch's arrays, rows first), ``run_chunk(chunk, store)``, ``open_store()``, ``release()`` and
the fields ``fsync``, ``device``, ``threads``. Every chunk's arrays are the concatenation of its
batches' arrays, so the same chunk gives the same numbers whichever engine runs it and however often
the job was interrupted.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convscope.core.errors import InputError
from convscope.methods.jobs.provenance import _versions
from convscope.methods.jobs.store import BatchStore, create_store, open_store

__all__ = ["ChunkBatches", "gather", "prepare_store", "run_chunks", "run_local"]

Progress = Callable[[int, int], None]


def gather(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One chunk's arrays from its batches' arrays (concatenated along the rows)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def prepare_store(path: Path, job_id: dict[str, Any], chunking: dict[str, Any], manifest: dict[str, Any],
                  shapes: dict[str, tuple[int, ...]], chunk_size: int, inputs: dict[str, Any] | None,
                  overwrite: bool, *, dtypes: dict[str, tuple[str, Any]] | None = None) -> BatchStore:
    """The store of the job ``job_id`` at ``path``: the existing one (a resume), or a new empty one.

    An existing store of another job is refused with one line naming what differs (unless
    ``overwrite``, or it holds nothing yet); a folder that is not a store is never deleted.
    ``manifest`` holds the new store's other fields (``job`` and ``chunking`` are added here).
    """
    if path.exists() and overwrite:
        if (path / "manifest.json").is_file() or (path.is_dir() and not any(path.iterdir())):
            shutil.rmtree(path)
        else:
            raise InputError(f"{path} exists and is not a batch store; refusing to delete it")
    if path.exists():
        store = open_store(path)
        m = store.manifest
        if m.get("job") == job_id and m.get("chunking") == chunking:
            return store
        if store.done_chunks() or store.complete:
            diff = sorted(
                k2
                for k2 in set(job_id) | {"chunking"}
                if (m.get("chunking") if k2 == "chunking" else m.get("job", {}).get(k2))
                != (chunking if k2 == "chunking" else job_id[k2])
            )
            raise InputError(
                f"{path} holds a different job (differs in: {', '.join(diff)}); use another output "
                "or overwrite=True (--overwrite)"
            )
        shutil.rmtree(path)  # another job's store that holds nothing: replace it
    return create_store(path, {**manifest, "job": job_id, "chunking": chunking}, shapes, chunk_size,
                        inputs, dtypes)


class ChunkBatches:
    """Batch sampler: the batches of the pending chunks, in order (chunk boundaries respected)."""

    def __init__(self, job: Any, chunks: Sequence[int]) -> None:
        self.plan = [b for c in chunks for b in job.batches(c)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


def run_local(job: Any, store: BatchStore, pending: list[int], num_workers: int,
              progress: Progress | None) -> None:
    """Compute the ``pending`` chunks here, a DataLoader (``num_workers`` processes) reading the images."""
    from torch.utils.data import DataLoader

    kw: dict[str, Any] = {"prefetch_factor": 4} if num_workers > 0 else {}
    dl = DataLoader(job.source, batch_sampler=ChunkBatches(job, pending), num_workers=num_workers, **kw)
    it = iter(dl)
    done = store.n_chunks - len(pending)
    files = store.input_files()
    try:
        for c in pending:
            inputs = store.input_fingerprint(c, files)
            parts = []
            for _ in job.batches(c):
                x, y, _idx = next(it)
                parts.append(job.compute(x, y))
            store.write_chunk(c, gather(parts), fsync=job.fsync, inputs=inputs)
            done += 1
            if progress is not None:
                progress(done, store.n_chunks)
    finally:
        job.release()  # the caller's model goes back where it was


def run_chunks(job: Any, store: BatchStore, *, engine: str, num_workers: int, ray_address: str | None,
               slots: int | None, progress: Progress | None) -> BatchStore:
    """Check the finished chunks (a failing one is computed again), run the rest, mark the store complete.

    Raises:
        InputError: a chunk was not written (run the job again).
    """
    # a resume checks every finished chunk: its data against the SHA-256 in its marker, its image
    # files against their contents then; a chunk that fails is computed again
    store.reopen(store.verify())
    pending = store.pending_chunks()
    if pending:
        if engine == "local":
            run_local(job, store, pending, num_workers, progress)
        else:
            from convscope.methods.jobs._ray import run_ray

            run_ray(job, store, pending, ray_address, slots, progress)
    if not store.complete:
        if not store.finish({"engine": engine, "versions": _versions(engine)}):
            raise InputError(
                f"{store.path}: chunks {store.pending_chunks()[:5]} were not written; run the job again"
            )
    return store
