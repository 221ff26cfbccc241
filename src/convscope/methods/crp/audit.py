"""``cluster_concepts(audit, model, data, layer=...)``: the concepts behind each suspect cluster of an audit.

For each suspect cluster of :func:`convscope.methods.dataset.audit` (a strategy of a class that looks like a
shortcut), LRP (:mod:`convscope.methods.attribution.lrp`) of the cluster's images for their class, down
to ``layer``, gives each image's relevance per channel; each image's channel *share* is that
channel's relevance over the layer's total (images whose total is not positive carry no evidence
for the class and are left out, and counted). The cluster's concepts are the ``k`` channels with
the highest mean share over its images. Each is shown on the cluster's first prototype by its
conditional heatmap (CRP, :func:`convscope.methods.crp.concepts` restricted to those channels), with
reference patches from a concept atlas when one is given.

Layer contract: :mod:`convscope.methods.crp` may import :mod:`convscope.methods.dataset`, not the
reverse, so the audit does not compute this itself; the CLI, report and app call it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError, MethodError, UnreliableResultWarning
from convscope.core.hooks import resolve_layers, state_guard
from convscope.core.result import HtmlFigure, Result, data_uri, jsonable, png_bytes, png_width
from convscope.core.validate import check_values, ints
from convscope.data.sources import as_source
from convscope.data.stream import model_device
from convscope.methods.attribution.lrp import COMPOSITES
from convscope.methods.crp._conditional import relevance_passes
from convscope.methods.crp.api import concepts
from convscope.methods.crp.result import ConceptRelevance
from convscope.models import load_model
from convscope.models.forward import layer_extractor

__all__ = ["ClusterConcepts", "SuspectConcepts", "cluster_concepts"]


@dataclass(frozen=True)
class SuspectConcepts:
    """The concepts of one suspect cluster.

    Attributes:
        class_name, class_index: the audited class (``class_index``: the model's output explained).
        cluster: the cluster's id in its class.
        images: data-set indices of the images the shares were averaged over.
        skipped: of those, images whose layer relevance was not positive (left out of the mean).
        channels: the ``k`` channels with the highest mean share, highest first.
        mean_share: their mean share over the cluster's images.
        example: the data-set index of the image the heatmaps are shown on (the first prototype).
        relevance: :func:`~convscope.methods.crp.concepts` of ``example`` restricted to ``channels``
            (its concepts in the image's own order; :meth:`concept` finds one by channel).
    """

    class_name: str
    class_index: int
    cluster: int
    images: np.ndarray = field(repr=False)
    skipped: int
    channels: tuple[int, ...]
    mean_share: tuple[float, ...]
    example: int
    relevance: ConceptRelevance = field(repr=False)

    def concept(self, channel: int) -> Any:
        """The :class:`~convscope.methods.crp.Concept` of ``channel`` on the example image."""
        for c in self.relevance.concepts:
            if c.channels == (channel,):
                return c
        raise InputError(f"channel {channel} is not one of this cluster's concepts {list(self.channels)}")

    def caption(self) -> str:
        parts = ", ".join(f"ch {c} {s:.0%}" for c, s in zip(self.channels, self.mean_share, strict=True))
        skip = f" ({self.skipped} with no positive relevance left out)" if self.skipped else ""
        return (f"class {self.class_name}, cluster {self.cluster}: mean relevance share over its "
                f"{len(self.images)} images{skip}: {parts}; heatmaps on image {self.example}")


@dataclass(frozen=True)
class ClusterConcepts(Result):
    """The concepts behind every suspect cluster of an audit (see the module docstring).

    Attributes:
        suspects: one :class:`SuspectConcepts` per suspect cluster, most suspicious first.
        layer: the layer whose channels are the concepts.
        composite: the LRP composite.
        model_name: the model's spec.
        notes: what makes the result less reliable (each also raised as a warning).
    """

    suspects: tuple[SuspectConcepts, ...]
    layer: str
    composite: str
    model_name: str = ""
    notes: tuple[str, ...] = ()

    save_formats: ClassVar[tuple[str, ...]] = (".png", ".json", ".html")

    def __repr__(self) -> str:
        return f"ClusterConcepts({self.model_name} @ {self.layer}: {len(self.suspects)} suspect cluster(s))"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cluster_concepts", "layer": self.layer, "composite": self.composite,
                "model": self.model_name, "notes": list(self.notes),
                "suspects": [{"class": s.class_name, "class_index": s.class_index, "cluster": s.cluster,
                              "images": len(s.images), "skipped": s.skipped, "channels": list(s.channels),
                              "mean_share": list(s.mean_share), "example": s.example,
                              "example_concepts": jsonable(s.relevance.to_dict()["concepts"])}
                             for s in self.suspects]}

    def png(self, *args: Any, **kwargs: Any) -> bytes:
        """Each suspect's concept picture (:meth:`ConceptRelevance.png`), one under the other."""
        if not self.suspects:
            img = Image.new("RGB", (480, 40), (255, 255, 255))
            from PIL import ImageDraw

            ImageDraw.Draw(img).text((8, 12), "the audit has no suspect cluster", fill=(0, 0, 0))
            return png_bytes(img)
        tiles = [Image.open(io.BytesIO(s.relevance.png())).convert("RGB") for s in self.suspects]
        out = Image.new("RGB", (max(t.width for t in tiles), sum(t.height for t in tiles)), (255, 255, 255))
        y = 0
        for t in tiles:
            out.paste(t, (0, y))
            y += t.height
        return png_bytes(out)

    def html_figures(self) -> list[HtmlFigure]:
        if not self.suspects:
            return [HtmlFigure((), "The audit has no suspect cluster: no concepts to show.")]
        warn = "; ".join(self.notes)
        pngs = [s.relevance.png() for s in self.suspects]
        return [HtmlFigure((data_uri(png),), s.caption(), width=png_width(png), warning=warn)
                for s, png in zip(self.suspects, pngs, strict=True)]

    def report_title(self) -> str:
        return f"Concepts behind the suspect clusters ({self.layer})"


def cluster_concepts(audit: Any, model: Any, data: Any, layer: str | None = None, *, k: int = 3,
                     composite: str = "epsilon_plus_flat", atlas: Any = None, max_images: int = 64,
                     n_references: int = 4, batch_size: int = 16, space: str = "model",
                     device: Any = None) -> ClusterConcepts:
    """The ``k`` concepts (channels of ``layer``) that carry each suspect cluster's relevance.

    Args:
        audit: an :class:`~convscope.methods.dataset.Audit`.
        model: the audited model (a spec, ``nn.Module`` or loaded model).
        data: the audited data set (the cluster members are its indices).
        layer: the layer whose channels are the concepts (default: the model's default layer).
        k: concepts per cluster.
        composite: the LRP composite.
        atlas: a :class:`~convscope.methods.crp.ConceptAtlas` (or its store) of the same model,
            layer and composite for the reference patches; ``None``: no patches.
        max_images: at most this many images per cluster (its flagged images first).
        n_references: reference patches per concept.
        batch_size: images per LRP pass.
        space, device: how tensors in ``data`` are read; where the model runs.

    Raises:
        InputError: bad ``k`` or sizes; data that is not the audited data set.
        MethodError: an unknown composite, a layer without channels, a model LRP cannot cover.
    """
    check_values(k=(k, ints(1)), max_images=(max_images, ints(1)), batch_size=(batch_size, ints(1)),
                 n_references=(n_references, ints(1, 64)))
    if composite not in COMPOSITES:
        raise MethodError(f"unknown LRP composite {composite!r}; use one of {', '.join(COMPOSITES)}")
    if not hasattr(audit, "suspects"):
        raise InputError(f"audit= must be an Audit (convscope.audit), got a {type(audit).__name__}")
    lm = load_model(model)
    src = as_source(data, lm.preprocessing, space=space)
    dev = model_device(lm.model, device)
    x0 = src[0][0][None].to(dev)
    lm.fill_from_input(x0)
    chosen = layer if layer is not None else lm.default_layer
    if chosen is None:
        raise MethodError(f"{lm.name} has no default layer; pass layer=")
    names = resolve_layers(lm.model, chosen)
    if len(names) != 1:
        raise InputError(f"layer= must name one layer, got {len(names)}: {', '.join(names[:5])}")
    name = names[0]
    with state_guard(lm.model), torch.no_grad():
        probe = layer_extractor(lm.model, name)(x0)
    if probe.ndim < 3:  # checked whether or not there are suspects
        raise MethodError(f"layer {name!r} has no channels (its output is {tuple(probe.shape[1:])} per "
                          "image); pick a convolutional layer")
    notes: list[str] = []
    items = []
    for cls, cl in audit.suspects:
        flagged = {int(m) for m in cl.flagged}
        rest = [int(m) for m in cl.members if int(m) not in flagged]
        rows = np.asarray([*sorted(flagged), *rest], dtype=np.int64)
        rows = rows[:max_images]
        if rows.size and int(rows.max()) >= len(src):
            raise InputError(f"cluster {cl.id} of class {cls.name} names image {int(rows.max())} but the "
                             f"data set has {len(src)} images; pass the data set the audit was run on")
        t = int(cls.model_class)
        share_sum: torch.Tensor | None = None
        used = 0
        with state_guard(lm.model), relevance_passes(
                lm.model, name, lambda o, t=t: o[:, t].float(), composite=composite,
                preprocessing=lm.preprocessing, channels=x0.shape[1], to_input=False) as run:
            for i in range(0, len(rows), batch_size):
                xb = torch.stack([src[int(j)][0] for j in rows[i:i + batch_size]]).to(dev)
                rl = run(xb)["layer"]
                if rl.ndim < 3:
                    raise MethodError(f"layer {name!r} has no channels (its output is {tuple(rl.shape[1:])} "
                                      "per image); pick a convolutional layer")
                per = rl.flatten(2).sum(2)  # (b, C)
                total = per.sum(1, keepdim=True)
                ok = total[:, 0] > 0
                used += int(ok.sum())
                s = (per[ok] / total[ok]).sum(0).cpu()
                share_sum = s if share_sum is None else share_sum + s
        assert share_sum is not None
        skipped = len(rows) - used
        if used == 0:
            notes.append(f"class {cls.name}, cluster {cl.id}: no image has positive relevance at {name} for "
                         "the class; its concepts are not meaningful")
            used = 1
        elif skipped:
            notes.append(f"class {cls.name}, cluster {cl.id}: {skipped} of {len(rows)} images have no "
                         f"positive relevance at {name} for the class and are left out of the mean share")
        mean = share_sum / used
        kk = min(k, mean.numel())
        top = torch.argsort(mean, descending=True)[:kk].tolist()
        example = int(cl.prototypes[0]) if cl.prototypes else int(rows[0])
        with warnings.catch_warnings():  # its own notes are kept in the ConceptRelevance
            warnings.simplefilter("ignore", UnreliableResultWarning)
            rel = concepts(lm, src[example][0][None], target=t, layer=name, k=kk, channels=top,
                           composite=composite, atlas=atlas, n_references=n_references,
                           batch_size=batch_size, device=dev)
        items.append(SuspectConcepts(cls.name, t, int(cl.id), rows, skipped, tuple(top),
                                     tuple(float(mean[c]) for c in top), example, rel))
    for n in notes:
        warnings.warn(n, UnreliableResultWarning, stacklevel=2)
    return ClusterConcepts(tuple(items), name, composite, lm.name, tuple(notes))
