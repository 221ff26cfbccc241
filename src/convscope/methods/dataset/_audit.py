"""``audit``: a model's strategies per class across a data set, and which of them look like shortcuts.

Spectral relevance analysis (SpRAy; Lapuschkin et al., "Unmasking Clever Hans predictors and
assessing what machines really learn", Nature Communications 10, 2019) in one call:

1. **Maps.** Every image is explained for its own label with ``method`` through the batch job
   engine (:func:`convscope.methods.jobs.run_batch`: chunked, resumable Zarr store, local or Ray).
2. **Downsize.** Maps are streamed from the store one chunk at a time. Each keeps its positive part
   (evidence *for* the class), is area-averaged onto a ``size x size`` grid and scaled to sum 1: a
   distribution of attribution mass over the image. Only these small copies are held in memory.
3. **Cluster per class.** A symmetric k-nearest-neighbour graph of the class's maps; the
   eigenvalues of its normalised Laplacian; the number of clusters ``k`` where the largest gap
   between consecutive eigenvalues lies (the eigengap; ``k=`` overrides); spectral clustering into
   ``k`` groups; a 2-D embedding (t-SNE, PCA or UMAP) of the maps.
4. **Describe each cluster.** ``M`` is its mean map and ``O`` the mean map of the class's other
   images. The cluster's *region*
   is the smallest box that holds ``mass`` (80%) of ``max(M - O, 0)``: where this cluster's
   attribution exceeds the rest of the class's, i.e. what sets this strategy apart. Then, each
   in [0, 1]:

   * *concentration* = (1 - the box's share of the image)^2: a small region scores high (a box of
     5% of the image 0.90, 15% 0.72, 40% 0.36, 60% 0.16);
   * *consistency* = the median over the cluster's images of their own share of attribution in
     the box, divided by the mean map's share ``M(box)`` and capped at 1: every member uses the
     region, not just their average;
   * *exclusivity* = (1 - o / M(box))^2, floored at 0, where ``o`` is the median over the
     class's other clusters of their mean map's share in the box: the other strategies do not
     use the region. The median, so that a shortcut the clustering split in two does not hide
     behind its twin. A region the others use at a third of the cluster's level scores 0.44;
     squared so that strategies that share a region (two ways of drawing the same digit) stay
     below the threshold.

   **suspicion = concentration x consistency x exclusivity**, and a cluster is ``suspect`` when
   its suspicion reaches ``threshold`` (0.5) and it has at least ``min_cluster`` images. The
   product is high only when all three hold: a small region, used by every member, that the
   class's other images do not use: the signature of the copyright tag on PASCAL VOC's horses.
   The box is found on the difference, not on ``M`` itself, because a shortcut rarely takes all
   of a map: the watermarked digits of ``digits-watermark`` put about a third of their Grad-CAM
   mass on the mark and the rest on the digit, which every cluster of the class shares. The score
   reads attribution only; whether the region is part of the object is for a person to say,
   which is why every cluster comes with its mean map, its box and prototypes.

   A class with a single cluster has no other strategy to set apart from: its region is the box
   holding ``mass`` of ``M`` itself, its exclusivity is 0 and this comparison never flags it.

5. **Compare each class with the other classes** (:mod:`convscope.methods.dataset._compare`): a shortcut
   that most or all of a class carries, which step 4 cannot see (twin clusters of the shortcut
   count each other as "the class's other clusters"; a shortcut on every image leaves nothing to
   compare with). The clusters whose typical member carries a suspect class's region are flagged
   too; ``AuditCluster.flagged_by`` says which comparison flagged a cluster.
   Then the *pixel comparison* (:mod:`convscope.methods.dataset._pixels`): a region the class's images
   agree on, unlike every other class, that the model looks at and that flips images of other
   classes when pasted in (a screen of at most 16): a shortcut whose attribution other classes'
   objects hide (a texture band in the bottom rows, where other digits' strokes are).
6. **Prove each suspect by intervention** (:mod:`convscope.methods.dataset._intervene`): the region is
   removed from the suspect's images and pasted into images of other classes, two batched forward
   passes per suspect image; a suspect is confirmed when the pasted region alone flips the model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convscope.core.errors import InputError
from convscope.core.validate import check_values, option_group, shows_options
from convscope.methods.dataset import _spectral as sp
from convscope.methods.dataset._audit_result import Audit, AuditClass, AuditCluster
from convscope.methods.dataset._cluster import _describe
from convscope.methods.dataset._compare import compare_classes
from convscope.methods.dataset._intervene import intervene_all
from convscope.methods.dataset._pixels import class_carriers, cluster_carriers, pixel_check_all
from convscope.methods.dataset._settings import AUDIT_RANGES, MIN_IMAGES, AuditSettings
from convscope.methods.jobs.batch import JobOptions

__all__ = ["AUDIT_RANGES", "Audit", "AuditClass", "AuditCluster", "AuditSettings", "audit"]

def _select_classes(classes: Any, names: list[str], present: np.ndarray) -> list[int]:
    """Class indices to audit: ``None`` -> every class of the data (in order); names or indices."""
    if classes is None:
        return list(range(len(names))) if names else sorted(int(c) for c in np.unique(present) if c >= 0)
    if isinstance(classes, (str, int)):
        classes = [classes]
    out: list[int] = []
    for c in classes:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif isinstance(c, str) and c.strip().isdigit() and not names:
            out.append(int(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < max(
                len(names), int(present.max(initial=-1)) + 1):
            out.append(int(c))
        else:
            shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "none"
            raise InputError(f"unknown class {c!r} for the audit; the data's classes are: {shown}")
    return list(dict.fromkeys(out))


def _class_map(
    names: list[str], named: bool, model_names: list[str], n_out: int
) -> tuple[dict[int, int], list[str]]:
    """Data class -> model class, and notes on what was matched how.

    Class folders whose names are class names of the model map by name; when no name matches,
    data class ``i`` is taken as model class ``i`` (said in a note); data classes beyond the
    model's outputs, or unmatched while others match, are not explained (a note each).
    """
    if named:
        by_name = {i: model_names.index(n) for i, n in enumerate(names) if n in model_names}
        if by_name:
            return by_name, []
        notes = ["the data's class names are not the model's: data class i is taken as model class i "
                 "(the classes in sorted order); state the model's class names to match them by name"]
    else:
        notes = []
    return {i: i for i in range(min(len(names), n_out))}, notes


def mass_maps(maps: np.ndarray) -> torch.Tensor:
    """(b, H, W) maps -> their positive part (evidence for the class) scaled to sum 1 each; a map
    without positive mass counts as uniform."""
    m = torch.from_numpy(np.nan_to_num(np.asarray(maps, dtype=np.float32))).clamp(min=0)
    m = torch.where(m.sum((1, 2), keepdim=True) <= 0, torch.ones_like(m), m)
    return m / m.sum((1, 2), keepdim=True)


def _downsize(maps: np.ndarray, size: int) -> np.ndarray:
    """(b, H, W) maps -> their :func:`mass_maps`, area-averaged onto (b, size, size), summing to 1."""
    small = F.adaptive_avg_pool2d(mass_maps(maps)[:, None], (size, size))[:, 0]
    return (small / small.sum((1, 2), keepdim=True).clamp(min=1e-30)).numpy()


@shows_options(AuditSettings, JobOptions)
def audit(
    model: Any,
    data: Any,
    *,
    classes: Sequence[str | int] | str | int | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    options: dict[str, Any] | None = None,
    store: str | os.PathLike | None = None,
    space: str = "model",
    progress: bool | None = None,
    **settings: Any,
) -> Audit:
    """Find a model's strategies per class across ``data`` and flag the ones that look like shortcuts.

    Every image is explained for its own label; the maps of each class are clustered spectrally
    (the eigengap gives the number of strategies) and each cluster is scored for how much it
    looks like a Clever Hans: attribution on a small region, used by all its images, that the
    class's other clusters do not use. See :mod:`convscope.methods.dataset._audit` for the exact rule.

    Args:
        model: a model spec, ``nn.Module`` or loaded model.
        data: labelled images: an image folder with one sub-folder per class, ``"digits"``
            (``"digits:test"``), a torch ``Dataset`` of ``(image, label)`` or a data source.
        classes: class names or indices to audit (default: every class of the data).
        method: any registered explain method (default Grad-CAM at the model's default layer).
        layer: layer for layer methods (default: the model's).
        options: method options.
        store: folder of the maps' Zarr store; the same store resumes an interrupted audit
            (default: a temporary store, deleted afterwards).
        space: how tensors in ``data`` are read (``"model"`` or ``"pixels"``).
        progress: ``None``: progress on stderr (a bar on a terminal, lines elsewhere); ``False``: none.
        **settings: how each class is clustered and scored, the fields of :class:`AuditSettings`:

            * ``k``: the number of clusters for every class (default: chosen per class by the eigengap);
            * ``max_k``: the largest ``k`` the eigengap may choose;
            * ``size``: maps are compared on a ``size x size`` grid (memory: 4 * size^2 bytes per image);
            * ``n_neighbors``: neighbours per image in the affinity graph;
            * ``mass``: the share of attribution a cluster's box must hold;
            * ``threshold``: suspicion at which a cluster is flagged ``suspect``;
            * ``min_cluster``: clusters smaller than this are never flagged;
            * ``embedding``: ``"tsne"``, ``"pca"``, ``"umap"`` (needs umap-learn) or ``"none"``;
            * ``prototypes``: images shown per cluster (closest to the cluster's mean map);

            and how the maps' batch job runs, the fields of :class:`~convscope.methods.jobs.batch.JobOptions`
            (``engine``, ``batch_size``, ``chunk_size``, ``num_workers``, ``device``, ``ray_address``,
            ``slots``, ``overwrite``: as for :func:`convscope.methods.jobs.run_batch`), with ``seed`` also the
            seed of the clustering and the embedding, and ``limit`` (use only the first ``limit``
            images of the data).

    Returns:
        An :class:`Audit`; ``.save("audit.json")``, ``.save("report.html")``, ``.suspects``.

    Raises:
        InputError: bad settings, unlabelled data, unknown classes (before any map is computed).
    """
    from threadpoolctl import threadpool_limits

    from convscope.core.progress import Progress
    from convscope.data.sources import Subset, as_source
    from convscope.data.stream import model_device
    from convscope.methods.dataset.embed import EMBED_RANGES, project
    from convscope.methods.jobs import run_batch
    from convscope.methods.jobs.provenance import input_files
    from convscope.methods.jobs.store import zarr_module
    from convscope.methods.registry import get_method
    from convscope.models import load_model

    own = {f.name for f in fields(AuditSettings)}
    cfg = AuditSettings(**{n: v for n, v in settings.items() if n in own})
    job = option_group(JobOptions, "audit", {n: v for n, v in settings.items() if n not in own})
    check_values(seed=(job.seed, EMBED_RANGES["seed"]))  # it seeds the map too: checked before the maps
    if cfg.embedding == "umap":
        project(np.eye(3, 2), "umap")  # a missing umap-learn fails here, before the maps
    info = get_method(method)
    lm = load_model(model)
    base = as_source(data, lm.preprocessing, limit=job.limit, space=space)
    data_labels = base.labels()
    if len(data_labels) == 0 or (data_labels < 0).all():
        where_ = f" ({data})" if isinstance(data, (str, os.PathLike)) else ""
        raise InputError(
            f"the audit needs labelled images{where_}: an image folder with one sub-folder per class, "
            "or a Dataset of (image, label)"
        )
    x0 = base[0][0][None]
    lm.fill_from_input(x0)
    with torch.no_grad():
        n_out = int(lm.model(x0.to(model_device(lm.model, job.device))).shape[1])
    # labels without names are the model's class indices: name them as the model does
    names = list(base.class_names) or [
        lm.class_names[i] if i < len(lm.class_names) else str(i) for i in range(int(data_labels.max()) + 1)
    ]
    to_model, notes = _class_map(names, bool(base.class_names), list(lm.class_names), n_out)
    chosen = _select_classes(classes, names, data_labels)
    rows = np.flatnonzero(np.isin(data_labels, [c for c in chosen if c in to_model]))
    if len(rows) == 0:
        raise InputError("none of the audited classes has an image the model can explain; "
                         + (notes[0] if notes else "check --only-classes / classes="))
    src = Subset(base, rows, [to_model[int(v)] for v in data_labels[rows]])
    recorded = {**asdict(cfg), "seed": job.seed, "limit": job.limit}

    tmp = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="convscope-audit-")
        store = Path(tmp.name) / "maps.zarr"
    try:
        bar = Progress("audit: maps", 1, enabled=progress, unit="chunks")

        def on_chunk(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        with bar:
            st = run_batch(  # the source holds the first ``limit`` images already
                lm, src, method, store, target="label", layer=layer, options=options, progress=on_chunk,
                **asdict(replace(job, limit=None)),
            )
        man = st.manifest
        layer_used = man["job"]["layer"]
        arr = zarr_module().open_array(str(st.path / "maps"), mode="r")
        n_img, h, w = (int(v) for v in arr.shape)
        prob_arr = zarr_module().open_array(str(st.path / "probabilities"), mode="r")
        explained = st.read("targets")  # the model class each row was explained for
        run_labels = data_labels[rows]  # the data's class of each computed row
        small = np.empty((n_img, cfg.size, cfg.size), dtype=np.float32)
        # per row: the probability of the explained class, and whether it was the prediction
        probs = np.empty((n_img, 2), dtype=np.float32)
        pred = np.empty(n_img, dtype=np.int64)  # the model's prediction of each row
        for c in range(st.n_chunks):  # stream: one chunk of maps and probabilities at a time
            lo, hi = st.rows(c)
            small[lo:hi] = _downsize(arr[lo:hi], cfg.size)
            p = np.asarray(prob_arr[lo:hi])
            t = explained[lo:hi]
            probs[lo:hi, 0] = p[np.arange(hi - lo), t]
            probs[lo:hi, 1] = p.argmax(1) == t
            pred[lo:hi] = p.argmax(1)

        files = input_files(src)  # (folder, the file of each row) for an image folder
        paths = None if files is None else files[1]
        results: list[AuditClass] = []
        cls_bar = Progress("audit: classes", len(chosen), enabled=progress, unit="classes")
        with cls_bar:
            for n_done, ci in enumerate(chosen):
                idx = np.flatnonzero(run_labels == ci)
                # one thread for the small per-class problems: OpenMP pools that spin beside torch's
                # threads slowed a class 100x on a busy 2-core machine
                with threadpool_limits(1 if len(idx) <= 2000 else None):
                    results.append(_audit_class(ci, names[ci], to_model.get(ci, -1), idx, small, probs, paths,
                                                cfg, seed=job.seed, image_size=(h, w), project=project))
                cls_bar.update(n_done + 1)
        compare_classes(results, small, cfg, (h, w))
        pixel_check_all(results, lm, src, small, pred, run_labels, cfg, job, (h, w))
        cluster_carriers(results, src)
        class_carriers(results, src, small, cfg)
        _full_maps(results, st, arr, src)
        intervene_all(results, lm, src, probs, pred, prob_arr, st, run_labels, cfg, job, (h, w))
        for c in results:  # rows of the run -> indices of the caller's data set
            c.members = rows[c.members]
            for cl in c.clusters:
                cl.members = rows[cl.members]
                cl.carriers = None if cl.carriers is None else rows[cl.carriers]
                cl.prototypes = [int(rows[i]) for i in cl.prototypes]
                for e in [] if cl.intervention is None else cl.intervention.examples:
                    e["member"], e["donor"] = int(rows[e["member"]]), int(rows[e["donor"]])
            if c.note:
                notes.append(f"class {c.name}: {c.note}")
        root = None if files is None else str(files[0])
        return Audit(
            classes=results, method=method, layer=layer_used, options=dict(options or {}),
            settings=recorded, model_info=lm.info(), data=base.describe(), image_size=(h, w),
            signed=bool(info.signed), store=None if tmp is not None else str(Path(store).resolve()),
            notes=notes, root=root, store_rows=[int(i) for i in rows],
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


def _audit_class(
    ci: int, name: str, model_class: int, idx: np.ndarray, small: np.ndarray, probs: np.ndarray,
    paths: list[str] | None, cfg: AuditSettings, *, seed: int, image_size: tuple[int, int], project: Any,
) -> AuditClass:
    n = len(idx)
    empty = np.zeros(0)
    none = np.zeros(n, np.int64)
    if model_class < 0:
        return AuditClass(ci, name, model_class, n, 0, "none", empty, empty, [], idx, none, None,
                          note="not a class of the model: not explained")
    if n < MIN_IMAGES:
        why = "no images" if n == 0 else f"only {n} image{'s' if n != 1 else ''}"
        return AuditClass(ci, name, model_class, n, 0, "none", empty, empty, [], idx, none, None,
                          note=f"{why}: not clustered (at least {MIN_IMAGES} are needed)")
    s = small.shape[1]
    x = small[idx].reshape(n, -1).astype(np.float64)
    aff = sp.knn_affinity(x, cfg.n_neighbors)
    spec = sp.spectrum(aff, cfg.max_k)
    note = ""
    if cfg.k is None:
        kk, source = spec.k, "eigengap"
    else:
        kk, source = int(cfg.k), "given"
        if kk > n - 1:
            note = f"k={cfg.k} asked for, but the class has {n} images: clustered into {n - 1}"
            kk = n - 1
    assign = sp.cluster(aff, kk, seed)
    coords = None
    if cfg.embedding != "none":
        from convscope.methods.dataset.embed import embedding_fallback, tsne_perplexity

        why = embedding_fallback(x, cfg.embedding)  # e.g. identical maps: t-SNE would crash the process
        used = tsne_perplexity(30.0, len(x))  # t-SNE's usual 30, at most (N - 1) / 3: said, not assumed
        lowered = (f"t-SNE perplexity {used:.4g} ((N - 1) / 3 for {len(x)} images; 30 asks more neighbours)"
                   if cfg.embedding == "tsne" and not why and used < 30.0 else None)
        note = "; ".join(filter(None, [note, why, lowered]))
        coords = project(x, "pca" if why else cfg.embedding, seed=seed, perplexity=used)
    clusters = [
        _describe(j, idx, assign, small, probs, paths, model_class, name, cfg, image_size=image_size, side=s)
        for j in range(int(assign.max()) + 1)
    ]
    return AuditClass(ci, name, model_class, n, kk, source, spec.eigenvalues, spec.gaps, clusters, idx,
                      assign, coords, note=note)


def _full_maps(results: list[AuditClass], st: Any, arr: Any, src: Any) -> None:
    """Second streamed pass: each cluster's mean map at full size, and its prototypes' maps."""
    n = arr.shape[0]
    owner = np.full(n, -1, dtype=np.int64)
    flat: list[AuditCluster] = [cl for c in results for cl in c.clusters]
    for g, cl in enumerate(flat):
        owner[cl.members] = g
    sums = [np.zeros(arr.shape[1:], dtype=np.float64) for _ in flat]
    want = {i: g for g, cl in enumerate(flat) for i in cl.prototypes}
    got: dict[int, np.ndarray] = {}
    for c in range(st.n_chunks):
        lo, hi = st.rows(c)
        if not (owner[lo:hi] >= 0).any():
            continue
        full = mass_maps(arr[lo:hi]).numpy()
        for r in range(hi - lo):
            g = int(owner[lo + r])
            if g >= 0:
                sums[g] += full[r]
            if lo + r in want:
                got[lo + r] = full[r].astype(np.float32)
    for g, cl in enumerate(flat):
        cl.mean_map = (sums[g] / max(1, cl.size)).astype(np.float32)
        cl.prototype_maps = [got[i] for i in cl.prototypes]
        cl.prototype_pixels = [src.pixels(i) for i in cl.prototypes]
