"""``ConceptTest``: the result of :func:`convscope.concept_test`, following the result protocol.

Its picture has one panel per layer: the statistic that decided (the sensitivity by default, else
the TCAV score) of the concept against each random set (dots) and their mean (a bar), beside the
null's values (grey dots and bar), with the corrected p-value above (and "score saturated" where
random directions score near 0 or 1). Its HTML block (and its report section)
adds the concept's images as a strip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from convscope.core.figure import InlineFigure, figure_png
from convscope.core.result import HtmlFigure, Result, data_uri, jsonable
from convscope.methods.tcav._cav import LayerTest

__all__ = ["ConceptTest"]

_CONCEPT, _NULL, _SIGNIFICANT = "#2b6cb0", "#9e9e9e", "#c53030"


@dataclass(frozen=True)
class ConceptTest(Result):
    """Whether a model uses a concept for a class, layer by layer (TCAV with a p-value).

    Attributes:
        concept: the concept's name.
        target, target_name: the class tested.
        layers: one :class:`~convscope.methods.tcav.LayerTest` per layer, in the order given.
        cav: how the vectors were made (``"mean_difference"``, ``"svm"``, ``"logistic"``).
        alpha: the significance level of the corrected p-values.
        n_concept, n_class: numbers of concept and class images.
        n_random, random_size: random sets the concept was tested against, and their size.
        random_source: where the random sets came from.
        class_source: which of the given class images were used.
        seed: the seed of the random draws.
        strip: (k, H, W, 3) uint8, some of the concept's images as the model sees them.
        model_info: what is known and what was assumed about the model (``assumed``).
        notes: what makes the result less reliable (each also raised as a warning).
        vectors: layer -> (n_random, D) the concept's unit CAVs (not saved to JSON).
        options: how the passes ran (batch size, channels-last, the null, ...).
    """

    concept: str
    target: int
    target_name: str
    layers: tuple[LayerTest, ...]
    cav: str
    alpha: float
    n_concept: int
    n_class: int
    n_random: int
    random_size: int
    random_source: str
    class_source: str
    seed: int
    strip: np.ndarray = field(repr=False)
    model_info: dict[str, Any] = field(default_factory=dict, repr=False)
    notes: tuple[str, ...] = ()
    vectors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    save_formats: ClassVar[tuple[str, ...]] = (".png", ".json", ".html")

    def __repr__(self) -> str:
        best = min(self.layers, key=lambda t: t.p_adjusted)
        return (f"ConceptTest({self.concept!r} for class {self.target_name!r}: "
                f"{'significant' if self.significant else 'not significant'} at {self.alpha:g}; "
                f"best layer {best.layer}, TCAV {best.score:.2f}, p = {best.p_adjusted:.2g})")

    @property
    def significant(self) -> bool:
        """Whether the concept drives the class at some layer (significant and above random)."""
        return any(t.significant and t.direction == "above" for t in self.layers)

    @property
    def verdicts(self) -> list[str]:
        """One line per layer: score, p-value, verdict."""
        return [t.verdict for t in self.layers]

    def layer(self, name: str) -> LayerTest:
        """The test at layer ``name``."""
        for t in self.layers:
            if t.layer == name:
                return t
        raise KeyError(f"no layer {name!r} in this test (layers: {', '.join(t.layer for t in self.layers)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "concept_test",
            "concept": self.concept,
            "target": self.target,
            "target_name": self.target_name,
            "cav": self.cav,
            "alpha": self.alpha,
            "significant": self.significant,
            "layers": [dict(jsonable(t.__dict__), verdict=t.verdict) for t in self.layers],
            "n_concept": self.n_concept,
            "n_class": self.n_class,
            "n_random": self.n_random,
            "random_size": self.random_size,
            "random_source": self.random_source,
            "class_source": self.class_source,
            "seed": self.seed,
            "options": jsonable(self.options),
            "notes": list(self.notes),
            "model_info": jsonable(self.model_info),
        }

    # --- pictures -------------------------------------------------------------------------------
    def figure(self) -> InlineFigure:
        """The score panels, one per layer (see the module docstring)."""
        n = len(self.layers)
        fig = InlineFigure(figsize=(1.9 * n + 0.8, 3.4))
        axes = fig.subplots(1, n, squeeze=False)[0]
        rng = np.random.default_rng(0)  # jitter of the dots only
        for ax, t in zip(axes, self.layers, strict=True):
            own, null = t.null_values()
            for x, vals, colour in ((0, own, _CONCEPT), (1, null, _NULL)):
                ax.bar(x, float(np.mean(vals)), width=0.6, color=colour, alpha=0.35)
                ax.scatter(x + rng.uniform(-0.18, 0.18, len(vals)), vals, s=12, color=colour, zorder=3)
            if t.statistic == "score":
                ax.axhline(0.5, color="#555", lw=0.6, ls=":")
                ax.set_ylim(0, 1.05)
            else:
                ax.axhline(0.0, color="#555", lw=0.6, ls=":")
            ax.set_xticks([0, 1], [self.concept[:12], f"random\n({t.null})"], fontsize=8)
            sat = "\nscore saturated" if t.saturated else ""
            star = " *" if t.significant else ""
            ax.set_title(f"{t.layer}\np = {t.p_adjusted:.2g}{star}{sat}", fontsize=9,
                         color=_SIGNIFICANT if t.significant else "black")
            ax.tick_params(labelsize=8)
        label = "TCAV score" if self.layers[0].statistic == "score" else "sensitivity (mean derivative)"
        axes[0].set_ylabel(f"{label}, class {self.target_name}", fontsize=8)
        fig.tight_layout()
        return fig

    def png(self, *args: Any, **kwargs: Any) -> bytes:
        return figure_png(self.figure(), dpi=kwargs.get("dpi", 100))

    def strip_image(self, side: int = 64) -> Image.Image:
        """The concept's images side by side, each enlarged to ``side`` pixels (nearest)."""
        tiles = [Image.fromarray(a).resize((side, side), Image.NEAREST) for a in self.strip]
        out = Image.new("RGB", (len(tiles) * (side + 2) - 2, side), "white")
        for k, tile in enumerate(tiles):
            out.paste(tile, (k * (side + 2), 0))
        return out

    def html_caption(self) -> str:
        return "; ".join(self.verdicts)

    def html_figures(self) -> list[HtmlFigure]:
        t0 = self.layers[0]
        caption = (f"Concept {self.concept!r} for class {self.target_name!r} ({self.cav} vectors, "
                   f"{t0.statistic} under the {t0.null} null, "
                   f"{self.n_random} random sets of {self.random_size}, {self.n_class} class images; "
                   f"Bonferroni over {len(self.layers)} layer(s), alpha {self.alpha:g}). "
                   + " | ".join(self.verdicts)
                   + "".join(f" | WARNING: {n}" for n in self.notes))
        return [HtmlFigure((data_uri(self.png()),), caption),
                HtmlFigure((data_uri(self.strip_image()),),
                           f"the concept's images ({self.n_concept} in all); "
                           f"random sets: {self.random_source}")]

    def add_to_report(self, report: Any, *, title: str | None = None, note: str = "") -> Any:
        """A report section: ``note``, the setting and any warning, a table per layer (score,
        sensitivity, the p-values of the default and the paper's tests, saturation, verdict), the
        panels and the concept's strip."""
        from convscope.core.result import Figure

        head, strip = self.html_figures()
        warn = "".join(f" WARNING: {n}" for n in self.notes)
        setting = (f"{self.cav} vectors, {self.n_random} random sets of {self.random_size} "
                   f"({self.random_source}), "
                   f"{self.n_class} class images ({self.class_source}); Bonferroni over {len(self.layers)} "
                   f"layer(s), alpha {self.alpha:g}; the {self.layers[0].statistic} under the "
                   f"{self.layers[0].null} null decides.")
        rows = [[t.layer, f"{t.score:.2f}", f"{np.mean(t.set_scores):.2f}", f"{t.saturation:.0%}"
                 + (" (saturated)" if t.saturated else ""), f"{t.sensitivity:.2g}",
                 f"{np.mean(t.set_sensitivities):.2g} +- {np.std(t.set_sensitivities, ddof=1):.2g}",
                 f"{t.p_values['sensitivity/exchangeable']:.2g}", f"{t.p_values['score/counterpart']:.2g}",
                 t.verdict.split(", ")[-1]] for t in self.layers]
        sec = report.section(title or self.report_title(), f"{note} {setting}{warn}".strip(), table=rows,
                             table_header=["layer", "TCAV score", "random sets' score",
                                           "random directions at 0 or 1", "sensitivity",
                                           "random sets' sensitivity", "p (sensitivity, exchangeable)",
                                           "p (score, counterpart: the paper's)", "verdict"])
        sec.rows.append([Figure(src=head.sources[0], caption="", pixelated=False,
                                width=190 * len(self.layers) + 80),
                         Figure(src=strip.sources[0], caption=strip.caption, pixelated=True, width=520)])
        sec.row_labels.append("")
        return sec

    def report_title(self) -> str:
        return f"Concept test: {self.concept} for {self.target_name}"
