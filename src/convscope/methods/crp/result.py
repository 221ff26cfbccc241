"""``ConceptRelevance``: the result of :func:`convscope.methods.crp.concepts`, following the result protocol.

Its picture: the input and its unconditional LRP heatmap, then one panel per concept (its
conditional heatmap over the input, titled with its channels and its share of the layer's
relevance), and, when reference images were found, a row of them under each concept (the
data-set patches with the most relevance for the concept, and beside them the most activation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from convscope.core.figure import InlineFigure, figure_png
from convscope.core.result import HtmlFigure, Result, data_uri, jsonable, png_width
from convscope.core.results import blend, normalize_map

__all__ = ["Concept", "ConceptRelevance"]


@dataclass(frozen=True)
class Concept:
    """One concept of a layer and what it contributed to the decision.

    Attributes:
        name: ``"ch 12"`` for a channel, or the name the caller gave a group.
        channels: the layer's channels the concept is made of.
        relevance: the relevance of those channels at the layer (summed over space).
        share: ``relevance`` over the layer's total relevance.
        heatmap: (H, W) the conditional heatmap: the concept's relevance propagated to the input
            (summed over colour channels; signed).
        heatmap_sum: the heatmap's sum (close to ``relevance`` where the rules conserve it).
        references: (n, h, w, 3) float images in [0, 1]: the patches of the data set with the
            highest relevance for this concept (relevance maximisation), or ``None``.
        activation_references: the same for the highest activation, or ``None``.
    """

    name: str
    channels: tuple[int, ...]
    relevance: float
    share: float
    heatmap: torch.Tensor = field(repr=False)
    heatmap_sum: float = 0.0
    references: np.ndarray | None = field(default=None, repr=False)
    activation_references: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ConceptRelevance(Result):
    """The concepts of a layer with the most relevance for one decision, with where they are.

    Attributes:
        layer: the layer's dotted name.
        target, target_name: the explained class.
        concepts: the k concepts, most relevant first.
        image: (H, W, 3) the input as the model saw it, in [0, 1].
        heatmap: (H, W) the unconditional LRP heatmap.
        layer_relevance: the layer's total relevance (all channels).
        score: the explained score (the target logit).
        composite: the LRP composite.
        lrp: what was applied (composite, canonizers, first layer, box).
        model_name: the model's spec or class name.
        model_info: what is known and what was assumed about the model (``assumed``).
        options: how it ran (k, batch size, reference set, ...).
        notes: what makes the result less reliable (each also raised as a warning).
    """

    layer: str
    target: int
    target_name: str
    concepts: tuple[Concept, ...]
    image: np.ndarray = field(repr=False)
    heatmap: torch.Tensor = field(repr=False)
    layer_relevance: float = 0.0
    score: float = 0.0
    composite: str = "epsilon_plus_flat"
    lrp: dict[str, Any] = field(default_factory=dict, repr=False)
    model_name: str = ""
    model_info: dict[str, Any] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    notes: tuple[str, ...] = ()

    save_formats: ClassVar[tuple[str, ...]] = (".png", ".json", ".npy", ".html")

    def __repr__(self) -> str:
        top = ", ".join(f"{c.name} {c.share:.0%}" for c in self.concepts[:4])
        more = ", ..." if len(self.concepts) > 4 else ""
        return (f"ConceptRelevance({self.model_name} @ {self.layer} for {self.target_name!r}: "
                f"{len(self.concepts)} concepts: {top}{more})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "concept_relevance",
            "layer": self.layer,
            "target": self.target,
            "target_name": self.target_name,
            "score": self.score,
            "layer_relevance": self.layer_relevance,
            "composite": self.composite,
            "lrp": jsonable(self.lrp),
            "concepts": [{"name": c.name, "channels": list(c.channels), "relevance": c.relevance,
                          "share": c.share, "heatmap_sum": c.heatmap_sum,
                          "references": 0 if c.references is None else len(c.references)}
                         for c in self.concepts],
            "model_name": self.model_name,
            "model_info": jsonable(self.model_info),
            "options": jsonable(self.options),
            "notes": list(self.notes),
        }

    def npy_array(self) -> torch.Tensor:
        """(k, H, W): the conditional heatmaps, most relevant concept first."""
        return torch.stack([c.heatmap for c in self.concepts])

    def overlay(self, heatmap: torch.Tensor) -> np.ndarray:
        """A signed heatmap over the (greyed) input, (H, W, 3) in [0, 1]."""
        return blend(self.image, normalize_map(heatmap.numpy(), signed=True), signed=True)

    # --- pictures -------------------------------------------------------------------------------
    def figure(self) -> InlineFigure:
        """Input, heatmap, one panel per concept, and reference rows (see the module docstring)."""
        k = len(self.concepts)
        refs = [c for c in self.concepts if c.references is not None]
        n_ref = max((len(c.references) for c in refs), default=0)  # type: ignore[arg-type]
        rows = 1 + (2 if refs else 0)
        cols = max(k + 2, 2)
        fig = InlineFigure(figsize=(1.6 * cols, 1.8 * rows + 0.4))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        axes[0, 0].imshow(self.image)
        axes[0, 0].set_title(f"input\n{self.target_name}", fontsize=8)
        axes[0, 1].imshow(self.overlay(self.heatmap))
        axes[0, 1].set_title(f"LRP ({self.composite})\nall concepts", fontsize=8)
        for j, c in enumerate(self.concepts):
            axes[0, j + 2].imshow(self.overlay(c.heatmap))
            axes[0, j + 2].set_title(f"{c.name}\n{c.share:.0%} of relevance", fontsize=8)
        if refs:
            axes[1, 0].text(0, 0.5, f"most relevant\n{n_ref} patches", fontsize=8, va="center")
            axes[2, 0].text(0, 0.5, f"most activating\n{n_ref} patches", fontsize=8, va="center")
            for j, c in enumerate(self.concepts):
                for r, imgs in ((1, c.references), (2, c.activation_references)):
                    if imgs is not None and len(imgs):
                        axes[r, j + 2].imshow(_mosaic(imgs))
        fig.suptitle(f"{self.model_name}: concepts of {self.layer} for {self.target_name} "
                     f"(red: for, blue: against)", fontsize=9)
        fig.tight_layout()
        return fig

    def png(self, *args: Any, **kwargs: Any) -> bytes:
        return figure_png(self.figure(), dpi=kwargs.get("dpi", 110))

    def html_caption(self) -> str:
        warn = "".join(f" WARNING: {n}" for n in self.notes)
        parts = "; ".join(f"{c.name} ({', '.join(map(str, c.channels[:6]))}"
                          f"{', ...' if len(c.channels) > 6 else ''}): {c.share:.1%}" for c in self.concepts)
        return (f"The {len(self.concepts)} concepts of layer {self.layer} with the most relevance for "
                f"{self.target_name!r} (LRP composite {self.composite}; each heatmap is the concept's "
                f"relevance propagated to the input): {parts}.{warn}")

    def html_figures(self) -> list[HtmlFigure]:
        png = self.png()
        return [HtmlFigure((data_uri(png),), self.html_caption(), width=png_width(png),
                           warning="; ".join(self.notes))]

    def report_title(self) -> str:
        return f"Concepts of {self.layer} for {self.target_name}"


def _mosaic(imgs: np.ndarray) -> np.ndarray:
    """Up to 4 images in a 2 x 2 mosaic with a white gap."""
    imgs = np.asarray(imgs)[:4]
    n, h, w, _ = imgs.shape
    out = np.ones((2 * h + 1, 2 * w + 1, 3))
    for i in range(n):
        r, c = divmod(i, 2)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = imgs[i]
    return out
