"""``run_batch``: any registered explain method over a data set, into a resumable Zarr store.

The job is cut into chunks of ``chunk_size`` images (one Zarr chunk each, see
:mod:`convscope.methods.jobs.store`); each chunk is cut into batches of ``batch_size`` that go through
:func:`convscope.explain`. The batches of a chunk are the same whichever engine runs it and
however often the job was interrupted, so a resumed or distributed job writes the same numbers.

Engines:

* ``"local"`` (default): a DataLoader (``num_workers`` processes read and preprocess images) feeds
  the model in this process; finished chunks are written as they complete.
* ``"ray"`` (extra ``ray``): Ray Data over the pending chunk ids, mapped by an actor pool (one
  actor per CPU slot, or per GPU with ``device="cuda"``); each actor holds the model and writes
  its chunks to the same store. Connects to ``ray_address`` or the running/auto-started Ray.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope.core.device import check_device
from convscope.core.errors import InputError, MethodError
from convscope.core.result import jsonable
from convscope.core.validate import option_group, shows_options
from convscope.methods.jobs.provenance import _versions, data_identity, model_fingerprint
from convscope.methods.jobs.runner import gather, prepare_store, run_chunks
from convscope.methods.jobs.store import FORMAT, BatchStore, open_store
from convscope.models import LoadedModel, load_model

__all__ = ["BatchJob", "JobOptions", "run_batch"]

Progress = Callable[[int, int], None]


def _check_target(target: Any, logits: torch.Tensor, lm: LoadedModel, src: Any) -> None:
    """Resolve ``target`` on the first image's logits, so a bad one fails before the store exists."""
    from convscope.core.targets import resolve_target

    if isinstance(target, str) and target == "label":
        from convscope.data.sources import Subset, TorchSource

        k = logits.shape[1]
        base = src.base if isinstance(src, Subset) else src
        # a torch Dataset yields labels only by loading each item: check the first one there
        labels = np.asarray([src.label(0)] if isinstance(base, TorchSource) else src.labels())
        if (labels < 0).any():
            raise InputError(
                "target 'label' needs labelled images; this data set has images without a label"
            )
        if (labels >= k).any():
            raise InputError(
                f"target 'label': the data set has label {int(labels.max())} but the model has {k} classes"
            )
        return
    resolve_target(target, logits, lm.class_names)


@dataclass(frozen=True)
class JobOptions:
    """How a batch job runs: the keyword options of :func:`run_batch`, which
    :func:`convscope.methods.dataset.audit` takes too and passes on. Checked when made.

    Attributes:
        batch_size: images per model call.
        chunk_size: images per store chunk (a multiple of ``batch_size`` keeps batches full).
        seed: seed of the method.
        limit: use only the first ``limit`` images of the data.
        engine: ``"local"`` or ``"ray"``.
        num_workers: DataLoader processes reading images (local engine).
        device: run the model here (``"cuda"`` gives Ray actors one GPU each); a device this
            machine lacks is refused when the options are made.
        ray_address: the Ray cluster to connect to (default: the running or auto-started Ray).
        slots: number of Ray actors (default: one per CPU, or per GPU).
        overwrite: replace a store made by a different job.

    Raises:
        InputError: an unknown engine, a size or limit that is not a positive integer, or a
            device that is not one or is not available here.
    """

    batch_size: int = 32
    chunk_size: int = 128
    seed: int = 0
    limit: int | None = None
    engine: str = "local"
    num_workers: int = 0
    device: str | None = None
    ray_address: str | None = None
    slots: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise InputError(f"unknown engine {self.engine!r}; use local or ray")
        for name in ("batch_size", "chunk_size", "limit"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        check_device(self.device)


@dataclass
class BatchJob:
    """Everything a worker needs to compute chunks (picklable, for DataLoader workers and Ray actors)."""

    model: LoadedModel
    source: Any
    method: str
    target: Any
    layer: str | None
    options: dict[str, Any]
    batch_size: int
    seed: int
    store_path: str
    chunk_size: int
    device: str | None = None
    fsync: bool = True
    threads: int | None = None
    _moved: bool = field(default=False, repr=False)
    _home: Any = field(default=None, repr=False)

    def _ready(self) -> None:
        if not self._moved:
            if self.device is not None:
                p = next(self.model.model.parameters(), None)
                self._home = None if p is None else p.device
                self.model.model.to(self.device)
            if self.threads:
                torch.set_num_threads(self.threads)
            self._moved = True

    def open_store(self) -> BatchStore:
        """The job's store (opened again in a Ray actor)."""
        return open_store(self.store_path)

    def release(self) -> None:
        """Move the caller's model back to the device it came on (after a local run)."""
        if self._moved and self._home is not None:
            self.model.model.to(self._home)
        self._moved = False

    def batches(self, chunk: int) -> list[list[int]]:
        n = len(self.source)
        lo, hi = chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, n)
        return [list(range(i, min(i + self.batch_size, hi))) for i in range(lo, hi, self.batch_size)]

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        """Explain one batch: maps (b, H, W), targets (b,), labels (b,), probabilities (b, K)."""
        from convscope.methods.explain import explain

        self._ready()
        target = self.target
        if isinstance(target, str) and target == "label":
            if bool((labels < 0).any()):
                raise InputError(
                    "target 'label' needs labelled images; this data set has images without a label"
                )
            target = [int(v) for v in labels]
        if self.device is not None:
            x = x.to(self.device)
        e = explain(
            self.model,
            x,
            method=self.method,
            target=target,
            layer=self.layer,
            batch_size=self.batch_size,
            seed=self.seed,
            **self.options,
        )
        probs = e.probabilities if e.probabilities is not None else torch.full((x.shape[0], 0), float("nan"))
        return {
            "maps": e.map.numpy().astype(np.float32, copy=False),
            "targets": np.array([-1 if t is None else int(t) for t in e.targets], dtype=np.int64),
            "labels": labels.numpy().astype(np.int64),
            "probabilities": probs.numpy().astype(np.float32, copy=False),
        }

    def run_chunk(self, chunk: int, store: BatchStore | None = None) -> int:
        """Compute and write one chunk (reading its images here); returns its size."""
        store = store or open_store(self.store_path)
        inputs = store.input_fingerprint(chunk)  # before the images are read
        parts = []
        for rows in self.batches(chunk):
            items = [self.source[i] for i in rows]
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([it[1] for it in items], dtype=torch.long)
            parts.append(self.compute(x, y))
        data = gather(parts)
        store.write_chunk(chunk, data, fsync=self.fsync, inputs=inputs)
        return int(next(iter(data.values())).shape[0])


@shows_options(JobOptions)
def run_batch(
    model: Any,
    data: Any,
    method: str = "saliency",
    out: str | os.PathLike = "convscope-batch.zarr",
    *,
    target: Any = None,
    layer: str | None = None,
    options: dict[str, Any] | None = None,
    fsync: bool = True,
    progress: Progress | None = None,
    space: str = "model",
    **job: Any,
) -> BatchStore:
    """Run ``method`` over every image of ``data`` and write the maps to a Zarr store at ``out``.

    Starting the same job again resumes it: finished chunks are kept once they pass their checksum
    and their input files are unchanged (:meth:`~convscope.methods.jobs.store.BatchStore.verify`); the
    rest, and any chunk that fails, are computed. A
    store made by a different job (model, method, options, data, chunking) is refused unless
    ``overwrite``.

    Args:
        model: a model spec, ``nn.Module`` or loaded model.
        data: ``"digits"``, an image folder, a torch ``Dataset`` or a source (see
            :func:`convscope.methods.dataset.as_source`).
        space: how tensors in ``data`` are read: what the model takes (``"model"``) or pixels
            in [0, 1] (``"pixels"``); see :mod:`convscope.models.inputs`.
        method: a registered method name.
        target: as for :func:`convscope.explain`, or ``"label"`` for each image's own label.
        layer: layer for layer methods (default: the model's).
        options: method options.
        fsync: make each chunk durable before its marker (turn off only for throwaway runs).
        progress: ``progress(done_chunks, total_chunks)`` after each chunk.
        **job: how the job runs, the fields of :class:`JobOptions` (``batch_size``, ``chunk_size``,
            ``seed``, ``limit``, ``engine``, ``num_workers``, ``device``, ``ray_address``, ``slots``,
            ``overwrite``).

    Returns:
        The finished :class:`~convscope.methods.jobs.store.BatchStore`.

    Shape:
        store maps (N, H, W) float32, targets (N,), labels (N,), probabilities (N, K).
    """
    from convscope.core.hooks import resolve_layers
    from convscope.data.sources import as_source
    from convscope.data.stream import model_device
    from convscope.methods.registry import check_method_options, get_method

    o = option_group(JobOptions, "run_batch", job)
    info = get_method(method)
    options = dict(options or {})
    check_method_options(info, options)
    lm = load_model(model)
    src = as_source(data, lm.preprocessing, limit=o.limit, space=space)
    n = len(src)
    if n == 0:
        raise InputError("the data set is empty")
    if info.needs_layer:
        x0 = src[0][0][None]
        lm.fill_from_input(x0)
        chosen = layer if layer is not None else lm.default_layer
        if chosen is None:
            raise MethodError(f"method {method!r} needs a layer and {lm.name} has no default; pass layer=")
        layer = ", ".join(resolve_layers(lm.model, chosen))
        if "," in layer:
            raise MethodError(f"batch jobs take one layer; {chosen!r} matched {layer}")
    elif layer is not None:
        raise MethodError(f"method {method!r} does not use a layer; drop layer=")
    h, w = lm.preprocessing.size
    with torch.no_grad():
        logits0 = lm.model(src[0][0][None].to(model_device(lm.model, o.device))).cpu()
    k = int(logits0.shape[1])
    _check_target(target, logits0, lm, src)  # every input is valid before the store exists
    data_id, files = data_identity(src)  # names here; contents per chunk (stale chunks are recomputed)
    n_chunks = math.ceil(n / o.chunk_size)
    job_id = {
        "model": lm.name,
        "model_sha256": model_fingerprint(lm.model),
        "method": method,
        "options": jsonable(options),
        "target": jsonable(target),
        "layer": layer,
        "seed": o.seed,
        "batch_size": o.batch_size,
        "data": data_id,
    }
    chunking = {"size": n, "chunk_size": o.chunk_size, "n_chunks": n_chunks, "axis": 0}
    shapes = {"maps": (n, h, w), "targets": (n,), "labels": (n,), "probabilities": (n, k)}
    manifest = {
        "format": FORMAT,
        "status": "running",
        "arrays": {name: {"shape": list(s)} for name, s in shapes.items()},
        "class_names": list(lm.class_names),
        "data_class_names": list(src.class_names),
        "method_info": {"family": info.family, "signed": info.signed, "summary": info.summary},
        "run": {"versions": _versions(o.engine), "python_executable": sys.executable},
    }
    inputs = None if files is None else {"root": str(files[0]), "files": files[1]}
    store = prepare_store(Path(out), job_id, chunking, manifest, shapes, o.chunk_size, inputs, o.overwrite)
    job = BatchJob(lm, src, method, target, layer, options, o.batch_size, o.seed, str(out), o.chunk_size,
                   device=o.device, fsync=fsync)
    return run_chunks(job, store, engine=o.engine, num_workers=o.num_workers, ray_address=o.ray_address,
                      slots=o.slots, progress=progress)
