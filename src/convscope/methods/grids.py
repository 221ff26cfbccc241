"""Side-by-side explanations of one image: several classes on one colour scale, or several methods.

* :func:`explain_classes`: the top-k classes (or a list, contrasts included) explained by one
  method, with their probabilities. The maps share **one colour scale** (the 99.5th percentile of
  all of them for unsigned maps, the largest absolute value for signed ones), so a brighter panel
  means more attribution, not just a different normalisation.
* :func:`explain_methods`: several methods on the same target; each panel keeps its own scale
  (methods have different units), with its colour bar.

Both return a :class:`Grid`: ``figure()`` (matplotlib, without pyplot), ``save("x.png" | "x.json"
| "x.npy")``, ``to_dict()``, inline in notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.core.result import Result
from convscope.core.results import (
    CLIP_PERCENTILE,
    DIVERGING_CMAP,
    SEQUENTIAL_CMAP,
    Explanation,
    blend,
    brief,
    result_repr,
    sign_legend,
)

__all__ = ["Grid", "explain_classes", "explain_methods"]


@dataclass(frozen=True)
class Grid(Result):
    """Panels of one image: one :class:`~convscope.Explanation` (a batch of one) per panel.

    Attributes:
        kind: ``"classes"`` (one method, several targets, one shared scale) or ``"methods"``.
        panels: the explanations, in display order.
        scale: the shared scale of a class grid (``None`` for a method grid: per panel).
    """

    kind: str
    panels: tuple[Explanation, ...]
    scale: float | None = None

    def __repr__(self) -> str:
        return result_repr(self, [
            ("kind", repr(self.kind)), ("model", brief(self.panels[0].model_name)),
            ("panels", "[" + ", ".join(repr(self._label(i)) for i in range(len(self.panels))) + "]"),
        ])

    def _label(self, i: int) -> str:
        e = self.panels[i]
        return e.target_name(0) if self.kind == "classes" else e.method

    def heatmap(self, i: int) -> np.ndarray:
        """Panel ``i``'s map, normalised: by the shared scale (class grids) or its own (methods)."""
        e = self.panels[i]
        if self.scale is None:
            return e.heatmap(0)
        m = e.map[0].numpy().astype(np.float64) / max(self.scale, 1e-12)
        return np.clip(m, -1.0 if e.signed else 0.0, 1.0)

    def figure(self) -> Any:
        """The input, then one overlay per panel with its title; colour bar(s) and sign legend."""
        import matplotlib
        from matplotlib.colors import Normalize

        from convscope.core.figure import InlineFigure

        n = len(self.panels)
        first = self.panels[0]
        fig = InlineFigure(figsize=(2.3 * (n + 1), 3.0))
        gs = fig.add_gridspec(2, n + 1, height_ratios=[1, 0.05], hspace=0.12, wspace=0.08)
        ax0 = fig.add_subplot(gs[0, 0])
        ax0.imshow(first.images[0])
        ax0.set_title("input", fontsize=9)
        axes = [ax0]

        def bar(e: Explanation, cax: Any, label: str, size: int) -> None:
            sm = matplotlib.cm.ScalarMappable(
                norm=Normalize(-1 if e.signed else 0, 1),
                cmap=DIVERGING_CMAP if e.signed else SEQUENTIAL_CMAP)
            cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
            cb.set_ticks([-1, 0, 1] if e.signed else [0, 0.5, 1])
            cb.ax.tick_params(labelsize=size - 1)
            cb.set_label(label, fontsize=size)

        for i, e in enumerate(self.panels):
            ax = fig.add_subplot(gs[0, i + 1])
            ax.imshow(blend(e.images[0], self.heatmap(i), signed=e.signed))
            ax.set_title(self._panel_title(i), fontsize=8)
            axes.append(ax)
            if self.scale is None:
                bar(e, fig.add_subplot(gs[1, i + 1]), sign_legend(e), 6)
        if self.scale is not None:
            legend = ("red: for the panel's class, blue: against" if first.signed
                      else "bright: evidence for the panel's class")
            bar(first, fig.add_subplot(gs[1, 1:]), f"one scale for all panels; {legend}", 7)
        for a in axes:
            a.set_xticks([])
            a.set_yticks([])
        fig.suptitle(self._suptitle(), fontsize=9)
        return fig

    def _panel_title(self, i: int) -> str:
        e = self.panels[i]
        t = e.targets[0]
        p = "" if e.probabilities is None or t is None else f" p={float(e.probabilities[0, t]):.2f}"
        if p and e.contrast is not None:
            p += f" vs {float(e.probabilities[0, e.contrast[0]]):.2f}"
        if self.kind == "classes":
            return f"{e.target_name(0)}{p}"
        layer = f"\n@ {e.layer}" if e.layer else ""
        return f"{e.method}{layer}"

    def _suptitle(self) -> str:
        e = self.panels[0]
        if self.kind == "classes":
            layer = f" @ {e.layer}" if e.layer else ""
            return f"{e.model_name}: {e.method}{layer}, {len(self.panels)} classes"
        t = e.targets[0]
        p = "" if e.probabilities is None or t is None else f" (p={float(e.probabilities[0, t]):.2f})"
        return f"{e.model_name}: {e.target_name(0)}{p}, {len(self.panels)} methods"

    save_formats = (".png", ".json", ".npy")

    def png(self) -> bytes:
        """:meth:`figure` as PNG bytes (``save``: ``.png`` this, ``.json`` :meth:`to_dict`, ``.npy``
        the raw maps, (n, H, W))."""
        from convscope.core.figure import figure_png

        return figure_png(self.figure())

    def npy_array(self) -> torch.Tensor:
        return torch.cat([e.map for e in self.panels])

    def to_dict(self) -> dict[str, Any]:
        """Plain data: kind, scale and each panel's metadata (``Explanation.to_dict``, no maps)."""
        return {"kind": self.kind, "scale": self.scale,
                "panels": [e.to_dict(include_map=False) for e in self.panels]}


def _shared_scale(maps: torch.Tensor, signed: bool) -> float:
    a = maps.abs() if signed else maps.clamp(min=0)
    v = a.flatten().double()
    return float(v.max() if signed else torch.quantile(v, CLIP_PERCENTILE / 100.0)) if v.numel() else 1.0


def explain_classes(
    model: Any,
    image: Any,
    *,
    classes: Sequence[Any] | None = None,
    topk: int = 4,
    method: str = "gradcam",
    **kwargs: Any,
) -> Grid:
    """Explain one image for several classes with one method, on one colour scale.

    Args:
        model: a model spec, ``nn.Module`` or loaded model.
        image: one image (path, PIL, array or tensor; see :func:`convscope.explain`).
        classes: classes to explain (indices, names, ``"a-vs-b"`` contrasts); default: the
            ``topk`` most probable.
        topk: how many classes when ``classes`` is not given.
        method: a registered method.
        **kwargs: passed to :func:`convscope.explain` (layer, options, preprocessing, space, ...).
    """
    from convscope.core.targets import check_topk, is_contrast, resolve_target
    from convscope.methods.explain import explain, prepare_inputs
    from convscope.models import load_model

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise InputError(f"topk must be a positive integer, got {topk!r}")
    lm = load_model(model, preprocessing=kwargs.pop("preprocessing", None))
    space = kwargs.pop("space", "model")
    x, _, _ = prepare_inputs(image, lm.preprocessing, generic=lm.any_channels, space=space)
    if x.shape[0] != 1:
        raise InputError(f"a class grid explains one image, got {x.shape[0]}")
    lm.fill_from_input(x)
    p = next(lm.model.parameters(), None)
    with torch.no_grad():
        logits = lm.model(x.to(p.device if p is not None else "cpu")).cpu()
    if classes is None:
        classes = logits[0].topk(check_topk(topk, int(logits.shape[1]))).indices.tolist()
    classes = list(classes)
    if not classes:
        raise InputError("no class to explain; pass classes= or topk >= 1")
    if any(is_contrast(c, lm.class_names) for c in classes):  # one call per panel
        parts = [explain(lm, x, method=method, target=c, **kwargs) for c in classes]
        maps = torch.cat([q.map for q in parts])
        panels = tuple(parts)
    else:  # one call: the image once per class, each row with its own class (x is in model space)
        idx = [int(resolve_target(c, logits, lm.class_names).indices[0]) for c in classes]
        e = explain(lm, x.expand(len(idx), *x.shape[1:]), method=method, target=idx, **kwargs)
        maps = e.map
        panels = tuple(e[i] for i in range(len(idx)))
    return Grid("classes", panels, _shared_scale(maps, panels[0].signed))


def explain_methods(
    model: Any,
    image: Any,
    methods: Sequence[str],
    *,
    target: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> Grid:
    """Explain one image with several methods for the same target, side by side.

    Args:
        methods: registered method names.
        target: as for :func:`convscope.explain` (contrasts included).
        options: per-method options, ``{"occlusion": {"window": 8}}``.
        **kwargs: passed to every :func:`convscope.explain` call (``layer`` goes to layer methods only).
    """
    from convscope.methods.attribution._shared import shared_work
    from convscope.methods.explain import explain
    from convscope.methods.registry import get_method
    from convscope.models import load_model

    methods = list(methods)
    if not methods:
        raise InputError("no method given; pass at least one")
    infos = [get_method(m) for m in methods]  # unknown names fail before any work
    options = dict(options or {})
    for m in options:
        if m not in methods:
            raise InputError(f"options for {m!r}, which is not among the methods {', '.join(methods)}")
    lm = load_model(model, preprocessing=kwargs.pop("preprocessing", None))
    layer = kwargs.pop("layer", None)
    panels = []
    with shared_work():  # the methods share their forward and backward passes on the image
        for info in infos:
            e = explain(lm, image, method=info.name, target=target,
                        layer=layer if info.needs_layer else None, **kwargs, **options.get(info.name, {}))
            if e.map.shape[0] != 1:
                raise InputError(f"a method grid explains one image, got {e.map.shape[0]}")
            panels.append(e)
    return Grid("methods", tuple(panels))
