"""``concept_atlas(model, data, layer=...)``: the reference patches of every channel of a layer.

For every image of a data set, LRP down to ``layer`` (:func:`~convscope.methods.crp.relevance_passes`)
gives each channel's relevance map for the image's decision and, in the same pass, its activation
map. Per image and channel the job stores the peak of each (value and position) and the
channel's summed relevance; the atlas is the top ``n`` images per channel by peak relevance
(relevance maximisation, Achtibat et al. 2023) and by peak activation, each shown as the receptive
field of the unit where the channel peaks (:class:`~convscope.methods.dataset.TopActivations`).

The job runs on the chunked-job engine of :mod:`convscope.methods.jobs` (local DataLoader or Ray,
a Zarr store, resumable: running it again computes only the chunks that are not done). Memory
holds one batch and a running top ``n`` per channel, whatever the number of images; the store
holds ``(N, C)`` numbers (indices and positions of the patches, no pixels: patches are cut from
the data set when drawn), so one store serves any ``n``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope.core.errors import InputError, MethodError, UnreliableResultWarning
from convscope.core.hooks import resolve_layers
from convscope.core.progress import Progress
from convscope.core.result import jsonable
from convscope.core.validate import check_values, ints, option_group, shows_options
from convscope.data.sources import as_source
from convscope.methods.attribution.lrp import COMPOSITES
from convscope.methods.crp._conditional import relevance_passes
from convscope.methods.crp.atlas_result import ConceptAtlas
from convscope.methods.dataset.receptive import receptive_field
from convscope.methods.dataset.top import RunningTopK, TopActivations
from convscope.methods.jobs.batch import BatchJob, JobOptions
from convscope.methods.jobs.provenance import data_identity, model_fingerprint
from convscope.methods.jobs.runner import prepare_store, run_chunks
from convscope.methods.jobs.store import FORMAT, BatchStore, open_store
from convscope.models import LoadedModel, load_model
from convscope.models.outputs import unwrap

__all__ = ["AtlasJob", "concept_atlas", "load_atlas"]

#: the store's arrays: (dtype, fill of rows not yet computed)
ATLAS_ARRAYS = {"rel_peak": ("float32", np.nan), "rel_pos": ("int32", -1), "act_peak": ("float32", np.nan),
                "act_pos": ("int32", -1), "rel_sum": ("float32", np.nan), "targets": ("int64", -1),
                "labels": ("int64", -1)}
KIND = "concept_atlas"


def _scores(target: Any, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``scores(out) -> (b,)``: each row's logit of its predicted class, its label or a fixed class."""
    if target == "pred":
        return lambda o: o.gather(1, o.detach().argmax(1, keepdim=True))[:, 0].float()
    if target == "label":
        if bool((labels < 0).any()):
            raise InputError("target 'label' needs labelled images; this data set has images without a label")
        lab = labels.long()
        return lambda o: o.gather(1, lab.to(o.device)[:, None])[:, 0].float()
    t = int(target)
    return lambda o: o[:, t].float()


@dataclass
class AtlasJob(BatchJob):
    """A :class:`~convscope.methods.jobs.BatchJob` whose batches give each channel's peaks, not maps.

    ``method`` is ``"lrp"``, ``options`` holds the composite, ``target`` is ``"pred"``, ``"label"``
    or a class index. ``feature_size``: the layer's (h, w), known after the first batch.
    """

    feature_size: tuple[int, int] | None = None

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        """One batch: per image and channel the peak relevance and activation (value, flat position),
        the summed relevance, the explained class and the label."""
        self._ready()
        if self.device is not None:
            x = x.to(self.device)
        lm = self.model
        with relevance_passes(lm.model, str(self.layer), _scores(self.target, labels),
                              composite=self.options["composite"], preprocessing=lm.preprocessing,
                              channels=x.shape[1], to_input=False) as run:
            r = run(x)
        rl, act, out = r["layer"], r["activation"], r["logits"]
        if rl.ndim != 4:
            raise MethodError(f"layer {self.layer!r} has no channels with a position (its output is "
                              f"{tuple(rl.shape)}, not batch x channels x height x width); pick a "
                              "convolutional layer")
        self.feature_size = (int(rl.shape[2]), int(rl.shape[3]))
        rv, rp = rl.flatten(2).max(2)
        av, ap = act.flatten(2).max(2)
        if self.target == "pred":
            t = out.argmax(1)
        elif self.target == "label":
            t = labels.long()
        else:
            t = torch.full((x.shape[0],), int(self.target), dtype=torch.long)

        def f32(a: torch.Tensor) -> np.ndarray:
            return a.detach().float().cpu().numpy()

        return {"rel_peak": f32(rv), "rel_pos": rp.int().cpu().numpy(), "act_peak": f32(av),
                "act_pos": ap.int().cpu().numpy(), "rel_sum": f32(rl.flatten(2).sum(2)),
                "targets": t.long().cpu().numpy(), "labels": labels.long().numpy()}


def _check_target(target: Any, n_classes: int) -> None:
    if isinstance(target, str):
        if target not in ("pred", "label"):
            raise InputError(f"unknown atlas target {target!r}; use pred (each image's predicted class), "
                             "label (its label) or a class index")
        return
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < n_classes:
        raise InputError(f"atlas target must be pred, label or a class index in 0..{n_classes - 1}, "
                         f"got {target!r}")


@shows_options(JobOptions)
def concept_atlas(
    model: Any,
    data: Any,
    layer: str | None = None,
    *,
    n: int = 8,
    composite: str = "epsilon_plus_flat",
    target: str | int = "pred",
    out: str | os.PathLike = "convscope-atlas.zarr",
    fsync: bool = True,
    progress: bool | Callable[[int, int], None] | None = None,
    space: str = "model",
    **job: Any,
) -> ConceptAtlas:
    """The ``n`` reference patches of every channel of ``layer`` over ``data``, by relevance and activation.

    Running it again with the same arguments resumes the job (finished chunks are kept when they
    pass their checksum, see :func:`convscope.methods.jobs.run_batch`); ``n`` is not part of the
    job, so one store serves any ``n``.

    Args:
        model: a model spec, ``nn.Module`` or loaded model.
        data: ``"digits"``, an image folder, a torch ``Dataset``, a tensor or a source (see
            :func:`convscope.methods.dataset.as_source`). A string is recorded in the store, so
            :func:`load_atlas` can read the patches again without it.
        layer: the layer whose channels are the concepts (default: the model's default layer).
        n: reference patches per channel (each of relevance and activation), 1..64 and at most the
            number of images.
        composite: the LRP composite (see :data:`convscope.methods.attribution.lrp.COMPOSITES`).
        target: the decision each image's relevance is for: ``"pred"`` (its predicted class),
            ``"label"`` (its label) or a class index.
        out: the store's folder.
        fsync: make each chunk durable before its marker.
        progress: ``None``: a progress bar on stderr (a bar on a terminal, lines elsewhere);
            ``False``: none; ``True``: always; or a callable ``progress(done_chunks, total_chunks)``
            called after each chunk.
        space: how tensors in ``data`` are read (``"model"`` or ``"pixels"``).
        **job: the fields of :class:`~convscope.methods.jobs.JobOptions` (``batch_size``,
            ``chunk_size``, ``limit``, ``engine``, ``num_workers``, ``device``, ``ray_address``,
            ``slots``, ``overwrite``; ``seed`` is unused: LRP is deterministic).

    Returns:
        The :class:`~convscope.methods.crp.ConceptAtlas` read from the finished store.

    Raises:
        InputError: bad ``n``, target or job option; an empty data set; a store of another job.
        MethodError: an unknown composite, a layer without channels, a model LRP cannot cover.
        LayerNotFoundError: no such layer.
    """
    report, bar = _reporter(progress)  # checked at the edge, before anything is written
    check_values(n=(n, ints(1, 64)))
    if composite not in COMPOSITES:
        raise MethodError(f"unknown LRP composite {composite!r}; use one of {', '.join(COMPOSITES)}")
    o = option_group(JobOptions, "concept_atlas", job)
    lm = load_model(model)
    data = _spec(data) or data  # a folder by its absolute path: the atlas's patches read it from anywhere
    src = as_source(data, lm.preprocessing, limit=o.limit, space=space)
    size = len(src)
    if size == 0:
        raise InputError("the data set is empty")
    if n > size:
        raise InputError(f"n={n} but the data set has {size} images; pass n <= {size}")
    x0, y0, _ = src[0]
    lm.fill_from_input(x0[None])
    chosen = layer if layer is not None else lm.default_layer
    if chosen is None:
        raise MethodError(f"{lm.name} has no default layer; pass layer=")
    names = resolve_layers(lm.model, chosen)
    if len(names) != 1:
        raise InputError(f"layer= must name one layer, got {len(names)}: {', '.join(names[:5])}")
    name = names[0]
    jobspec = AtlasJob(lm, src, "lrp", target, name, {"composite": composite}, o.batch_size, 0, str(out),
                       o.chunk_size, device=o.device, fsync=fsync)
    with torch.no_grad():
        k = int(lm.model(x0[None].to(_device(lm, o.device))).shape[1])
    _check_target(target, k)
    try:  # every input is valid (layer, target, labels, LRP coverage) before the store exists
        probe = jobspec.compute(x0[None], torch.tensor([y0]))
    finally:
        jobspec.release()
    channels = int(probe["rel_peak"].shape[1])
    data_id, files = data_identity(src)
    job_id = {"kind": KIND, "model": lm.name, "model_sha256": model_fingerprint(lm.model), "layer": name,
              "composite": composite, "target": jsonable(target), "batch_size": o.batch_size, "data": data_id}
    chunking = {"size": size, "chunk_size": o.chunk_size, "n_chunks": math.ceil(size / o.chunk_size),
                "axis": 0}
    shapes = {a: (size,) if a in ("targets", "labels") else (size, channels) for a in ATLAS_ARRAYS}
    manifest = {"format": FORMAT, "status": "running", "array_names": list(ATLAS_ARRAYS),
                "arrays": {a: {"shape": list(s)} for a, s in shapes.items()},
                "class_names": list(lm.class_names), "data_class_names": list(src.class_names),
                "data_spec": _spec(data),
                "limit": o.limit, "space": space,
                "atlas": {"channels": channels, "feature_size": list(jobspec.feature_size or (1, 1))}}
    inputs = None if files is None else {"root": str(files[0]), "files": files[1]}
    store = prepare_store(Path(out), job_id, chunking, manifest, shapes, o.chunk_size, inputs, o.overwrite,
                          dtypes=ATLAS_ARRAYS)
    try:
        run_chunks(jobspec, store, engine=o.engine, num_workers=o.num_workers, ray_address=o.ray_address,
                   slots=o.slots, progress=report)
    finally:
        if bar:
            bar[0].close()
    return load_atlas(store.path, lm, src, n=n)


def _reporter(progress: Any) -> tuple[Callable[[int, int], None], list[Progress]]:
    """``progress(done, total)`` for the job: the caller's callable, or a bar (``None``: on a terminal
    and as lines elsewhere; ``True``: on; ``False``: none) and the list that will hold it."""
    if callable(progress):
        return progress, []
    if progress is not None and not isinstance(progress, bool):
        raise InputError(f"progress={progress!r}: use None (the default bar), True, False or a callable "
                         "progress(done_chunks, total_chunks)")
    bar: list[Progress] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress("atlas: chunks", total, enabled=progress, unit="chunks"))
        bar[0].update(done)

    return report, bar


def _spec(data: Any) -> str | None:
    """How :func:`load_atlas` finds the data again: ``digits...`` as given, a folder as an absolute path,
    anything else ``None`` (in-memory data must be passed again)."""
    if isinstance(data, str) and (data == "digits" or data.startswith("digits:")):
        return data
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).resolve())
    return None


def _device(lm: LoadedModel, device: Any) -> torch.device:
    from convscope.data.stream import model_device

    return model_device(lm.model, device)


def load_atlas(path: str | os.PathLike, model: Any = None, data: Any = None, *, n: int = 8) -> ConceptAtlas:
    """The atlas in the finished store at ``path``, folded to the top ``n`` per channel.

    Reads the store one chunk at a time (memory: ``n`` entries per channel and one chunk).

    Args:
        path: the store :func:`concept_atlas` wrote.
        model: the model (for its preprocessing and the receptive field); default: the store's
            model spec (works for bundled models and files).
        data: the data set the atlas was made of; default: the store's ``data_spec`` (recorded when
            the data was given as a string).
        n: patches per channel.

    Raises:
        InputError: not an atlas store, an unfinished one, or no way to find its data or model.
    """
    check_values(n=(n, ints(1, 64)))
    store = open_store(path)
    m = store.manifest
    spec = m.get("job", {})
    if spec.get("kind") != KIND:
        raise InputError(f"{store.path} is not a concept atlas (a batch store of another job)")
    if not store.complete:
        raise InputError(f"{store.path} is an unfinished atlas ({len(store.done_chunks())}/{store.n_chunks} "
                         "chunks); run convscope atlas (concept_atlas) again to finish it")
    lm = load_model(model if model is not None else spec["model"])
    if data is None:
        if m.get("data_spec") is None:
            raise InputError(f"{store.path} was made from in-memory data: load it with load_atlas(path, "
                             "data=the same data set) and pass the loaded atlas")
        data = m["data_spec"]
    src = as_source(data, lm.preprocessing, limit=m.get("limit"), space=m.get("space", "model"))
    if len(src) != store.size:
        raise InputError(f"the data set has {len(src)} images but the atlas was made of {store.size}; "
                         "pass the same data set")
    if n > store.size:
        raise InputError(f"n={n} but the atlas holds {store.size} images; pass n <= {store.size}")
    rel, act, feature = _fold(store, n)
    layer = spec["layer"]
    notes = []
    try:
        rf = receptive_field(unwrap(lm.model), layer, tuple(lm.preprocessing.size))
    except MethodError as exc:
        rf = None
        notes.append(f"patches are whole images: the receptive field of {layer} is unknown ({exc})")
    views = [TopActivations(v, i, p, feature, rf, layer=layer, source=src, model_name=spec["model"])
             for v, i, p in (rel, act)]
    dead = int((views[0].values[:, 0] <= 0).sum())
    if dead:
        notes.append(f"{dead} of {views[0].channels} channels carry no positive relevance in any of the "
                     f"{store.size} images: their relevance patches show nothing the channel stands for")
    for note in notes:
        warnings.warn(note, UnreliableResultWarning, stacklevel=2)
    return ConceptAtlas(relevance=views[0], activation=views[1], composite=spec["composite"],
                        target=spec["target"], n_images=store.size, path=str(store.path),
                        model_sha256=spec["model_sha256"], notes=tuple(notes))


def _fold(store: BatchStore, n: int) -> tuple[Any, Any, tuple[int, int]]:
    """Top ``n`` per channel of the stored peaks, chunk by chunk: ((values, indices, positions) of
    relevance, of activation, the feature map's size)."""
    from convscope.methods.jobs.store import zarr_module

    zarr = zarr_module()
    arr = {a: zarr.open_array(str(store.path / a), mode="r") for a in ("rel_peak", "rel_pos", "act_peak",
                                                                        "act_pos")}
    h, w = (int(v) for v in store.manifest["atlas"]["feature_size"])
    tops = {"rel": RunningTopK(n), "act": RunningTopK(n)}
    for c in range(store.n_chunks):
        lo, hi = store.rows(c)
        idx = torch.arange(lo, hi)
        for kind, top in tops.items():
            v = torch.from_numpy(np.asarray(arr[f"{kind}_peak"][lo:hi]))
            flat = torch.from_numpy(np.asarray(arr[f"{kind}_pos"][lo:hi])).long()
            top.add(v, idx, torch.stack([flat // w, flat % w], dim=-1))
    out = [(t.values, t.indices, t.positions) for t in tops.values()]
    return out[0], out[1], (h, w)
