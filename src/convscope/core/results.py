"""Results that render themselves: :class:`Explanation`.

Normalisation, explicitly (``heatmap(normalize=...)``), per sample:

* unsigned maps (e.g. saliency, Grad-CAM): ``"percentile"`` (default) divides by the 99.5th
  percentile of the map and clips to [0, 1], so one hot pixel cannot wash out the rest;
  ``"max"`` divides by the maximum; ``"minmax"`` maps [min, max] to [0, 1]; ``None`` leaves raw values.
* signed maps (e.g. the raw gradient, gradient x input): ``"absmax"`` (default) divides by the
  largest absolute value, giving [-1, 1] with 0 kept at 0; ``"percentile"`` uses the 99.5th
  percentile of the absolute values and clips.

Colour maps: unsigned maps use a sequential map (``inferno``), signed ones a diverging map
centred on zero (``RdBu_r``: red positive, blue negative).
"""

from __future__ import annotations

import reprlib
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.result import HtmlFigure, LazyField, Result, batch_slice, data_uri, jsonable, png_bytes

__all__ = ["Explanation", "colorize", "data_uri", "normalize_map", "png_bytes", "sign_legend", "upscale"]

SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
#: the percentile an unsigned map is clipped at when normalised for display (robust to a few hot pixels)
CLIP_PERCENTILE = 99.5


def normalize_map(m: np.ndarray, *, signed: bool, normalize: str | None = "auto") -> np.ndarray:
    """Normalise one (H, W) map as documented in the module docstring."""
    m = np.asarray(m, dtype=np.float64)
    if normalize is None:
        return m
    if normalize == "auto":
        normalize = "absmax" if signed else "percentile"
    eps = 1e-12
    if signed:
        a = np.abs(m)
        if normalize == "absmax":
            scale = a.max()
        elif normalize == "percentile":
            scale = np.percentile(a, CLIP_PERCENTILE)
        else:
            raise InputError(
                f"unknown normalisation {normalize!r} for a signed map; use absmax or percentile"
            )
        return np.clip(m / max(scale, eps), -1.0, 1.0)
    if normalize == "percentile":
        lo, hi = 0.0, np.percentile(m, CLIP_PERCENTILE)
    elif normalize == "max":
        lo, hi = 0.0, m.max()
    elif normalize == "minmax":
        lo, hi = m.min(), m.max()
    else:
        raise InputError(f"unknown normalisation {normalize!r}; use percentile, max, minmax or None")
    return np.clip((m - lo) / max(hi - lo, eps), 0.0, 1.0)


def colorize(h: np.ndarray, *, signed: bool, cmap: str | None = None) -> np.ndarray:
    """(H, W) normalised map -> (H, W, 3) float RGB via a matplotlib colour map."""
    import matplotlib

    name = cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
    cm = matplotlib.colormaps[name]
    v = (h + 1.0) / 2.0 if signed else h
    return cm(np.clip(v, 0, 1))[..., :3]


def blend(img: np.ndarray, h: np.ndarray, *, signed: bool, alpha: float = 0.6,
          cmap: str | None = None) -> np.ndarray:
    """A normalised (H, W) map blended over the greyed (H, W, 3) image -> (H, W, 3) in [0, 1].

    The blend weight at each pixel is ``alpha * sqrt(|h|)``, so unimportant pixels show the image.
    """
    color = colorize(h, signed=signed, cmap=cmap)
    gray = np.asarray(img).mean(axis=2, keepdims=True) * np.ones((1, 1, 3))
    base = 0.25 + 0.6 * gray
    w = alpha * np.sqrt(np.clip(np.abs(h), 0, 1))[..., None]
    return base * (1 - w) + color * w


def sign_legend(e: Explanation, index: int = 0) -> str:
    """What the colours of ``e``'s map mean, in words (for colour bars and captions)."""
    if e.contrast is not None and e.targets[index] is not None:
        a, b = e.target_name(index).split(" vs ", 1)
        return f"red: evidence for {a}, blue: for {b}" if e.signed else f"bright: evidence for {a} over {b}"
    name = e.target_name(index)
    return f"red: for {name}, blue: against" if e.signed else f"bright: evidence for {name}"


def upscale(a: np.ndarray, min_side: int) -> Image.Image:
    """An (H, W, 3) float image in [0, 1] as a PIL image, enlarged by a whole factor (nearest
    neighbours, pixels stay sharp) until its short side is at least ``min_side``."""
    img = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))
    side = min(img.size)
    if side < min_side:
        k = int(np.ceil(min_side / side))
        img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    return img




@dataclass(frozen=True)
class Explanation(Result):
    """An attribution result for a batch of B images.

    Attributes:
        method: registry name of the method.
        map: (B, H, W) attribution map at input resolution (float32, CPU).
        images: (B, H, W, 3) display images in [0, 1] (what the model saw, denormalised).
        targets: explained class per sample (``None`` for callable targets).
        signed: whether the map can be negative.
        raw: optional raw attribution, e.g. the signed gradient (B, C, H, W).
        probabilities: (B, K) softmax of the logits, if computed.
        class_names: names of the K outputs.
        layer: the layer(s) the method worked at, if any.
        options: the options the method ran with.
        diagnostics: numbers qualifying the result (e.g. ``completeness_gap``).
        model_name: the model's spec or class name.
        normalization: what ``heatmap(normalize="auto")`` uses (``"auto"``: by sign; the method
            may ask for ``"minmax"``, e.g. RISE, whose map is an expected score with a large offset).
        model_info: what the result was computed with: weights, preprocessing, class names,
            default layer, and what convscope assumed (``LoadedModel.info()``).
        contrast: for a contrastive target (``"a-vs-b"``, :func:`convscope.contrast`), the class
            subtracted per sample (the map explains ``score[a] - score[b]``); else ``None``.
    """

    method: str
    map: torch.Tensor
    images: np.ndarray = LazyField()  # type: ignore[assignment]  # made on first read
    targets: tuple[int | None, ...]
    signed: bool = False
    raw: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()
    layer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    model_info: dict[str, Any] = field(default_factory=dict)
    normalization: str = "auto"
    contrast: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.map.shape[0])

    def __getitem__(self, i: int) -> Explanation:
        """The explanation of sample ``i`` alone (a batch of one)."""
        sl = batch_slice(i, len(self))
        return replace(
            self,
            map=self.map[sl],
            images=self.images[sl],
            targets=self.targets[sl],
            raw=None if self.raw is None else self.raw[sl],
            probabilities=None if self.probabilities is None else self.probabilities[sl],
            contrast=None if self.contrast is None else self.contrast[sl],
        )

    # --- labels -------------------------------------------------------------------------------
    def _name(self, t: int) -> str:
        return self.class_names[t] if t < len(self.class_names) else f"class {t}"

    def target_name(self, index: int = 0) -> str:
        """The explained class's name; ``"a vs b"`` for a contrast."""
        t = self.targets[index]
        if t is None:
            return "custom target"
        if self.contrast is not None:
            return f"{self._name(t)} vs {self._name(self.contrast[index])}"
        return self._name(t)

    def unreliable_because(self, index: int = 0) -> str | None:
        """Why sample ``index``'s map is unreliable, by its own diagnostics (``None``: nothing
        found); the one verdict the report badge, the web app and the warning show
        (:mod:`convscope.methods.attribution._verdict`)."""
        because = self.diagnostics.get("unreliable_because")
        if isinstance(because, (list, tuple)) and 0 <= index < len(because) and because[index]:
            return str(because[index])
        return None

    def title(self, index: int = 0) -> str:
        p = ""
        t = self.targets[index]
        if self.probabilities is not None and t is not None:
            p = f" (p={float(self.probabilities[index, t]):.2f}"
            if self.contrast is not None:
                p += f" vs {float(self.probabilities[index, self.contrast[index]]):.2f}"
            p += ")"
        layer = f" @ {self.layer}" if self.layer else ""
        return f"{self.method}{layer}: {self.target_name(index)}{p}"

    # --- pictures -----------------------------------------------------------------------------
    def heatmap(self, index: int = 0, *, normalize: str | None = "auto") -> np.ndarray:
        """The normalised (H, W) map of sample ``index`` (see the module docstring)."""
        if normalize == "auto" and self.normalization != "auto":
            normalize = self.normalization
        return normalize_map(self.map[index].numpy(), signed=self.signed, normalize=normalize)

    def colored(self, index: int = 0, *, cmap: str | None = None, min_side: int = 224) -> Image.Image:
        """The heatmap in colour as a PIL image (small maps upscaled with nearest neighbours)."""
        return upscale(colorize(self.heatmap(index), signed=self.signed, cmap=cmap), min_side)

    def overlay(
        self,
        index: int = 0,
        *,
        alpha: float = 0.6,
        cmap: str | None = None,
        min_side: int = 224,
    ) -> Image.Image:
        """The heatmap blended over the (grayed) input image.

        The blend weight at each pixel is ``alpha * sqrt(|h|)``, so unimportant pixels show the image.
        """
        return upscale(blend(self.images[index], self.heatmap(index), signed=self.signed, alpha=alpha,
                              cmap=cmap), min_side)

    def figure(self, index: int = 0, *, cmap: str | None = None) -> Any:
        """A matplotlib figure: input, overlay and heatmap with a colour bar.

        Made without pyplot (see :mod:`convscope.core.figure`): the caller's backend is left alone.
        Notebooks show it inline; elsewhere use ``fig.savefig(path)``.
        """
        from convscope.core.figure import InlineFigure

        fig = InlineFigure(figsize=(9, 3.4))
        axes = fig.subplots(1, 3)
        axes[0].imshow(self.images[index])
        axes[0].set_title("input", fontsize=9)
        axes[1].imshow(np.asarray(self.overlay(index, cmap=cmap)))
        axes[1].set_title("map over the input", fontsize=9)
        name = cmap or (DIVERGING_CMAP if self.signed else SEQUENTIAL_CMAP)
        vmin = -1 if self.signed else 0
        im = axes[2].imshow(self.heatmap(index), cmap=name, vmin=vmin, vmax=1)
        axes[2].set_title("map (normalised)", fontsize=9)
        bar = fig.colorbar(im, ax=axes[2], fraction=0.046)
        bar.set_label(sign_legend(self, index), fontsize=8)
        for a in axes:
            a.axis("off")
        fig.suptitle(f"{self.model_name}: {self.title(index)}", fontsize=10)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        """Method, model, targets (class names, probabilities), map shape, layer and options."""
        shown = 4
        targets = []
        for i in range(min(len(self), shown)):
            t = self.targets[i]
            p = ""
            if self.probabilities is not None and t is not None:
                p = f" p={float(self.probabilities[i, t]):.2f}"
            targets.append(("custom" if t is None else f"{t} {short_name(self.target_name(i))!r}") + p)
        if len(self) > shown:
            targets.append(f"... {len(self) - shown} more")
        return result_repr(self, [
            ("method", repr(self.method)),
            ("model", brief(self.model_name)),
            ("targets", "[" + ", ".join(targets) + "]"),
            ("map", str(tuple(self.map.shape))),
            ("signed", str(self.signed)),
            ("layer", repr(self.layer) if self.layer else None),
            ("options", brief(self.options) if self.options else None),
            ("diagnostics", brief(list(self.diagnostics)) if self.diagnostics else None),  # names only
        ])

    # --- saving -------------------------------------------------------------------------------
    def to_dict(self, *, include_map: bool = True) -> dict[str, Any]:
        """Metadata (and the raw maps as nested lists) as JSON-ready data."""
        d: dict[str, Any] = {
            "method": self.method,
            "model": self.model_name,
            "model_info": jsonable(self.model_info),
            "layer": self.layer,
            "signed": self.signed,
            "targets": list(self.targets),
            "contrast": None if self.contrast is None else list(self.contrast),
            "target_names": [self.target_name(i) for i in range(len(self))],
            "class_names": list(self.class_names),
            "options": {k: jsonable(v) for k, v in self.options.items()},
            "diagnostics": {k: jsonable(v) for k, v in self.diagnostics.items()},
            "shape": list(self.map.shape),
        }
        if self.probabilities is not None:
            d["target_probabilities"] = [
                None if t is None else float(self.probabilities[i, t])
                for i, t in enumerate(self.targets)
            ]
            d["probabilities"] = self.probabilities.tolist()
        if include_map:
            d["map"] = self.map.tolist()
        return d

    save_formats = (".png", ".npy", ".json")

    def png(self, index: int = 0) -> bytes:
        """The overlay of sample ``index`` as PNG bytes.

        ``save(path, index)`` writes by extension: ``.png`` (this), ``.npy`` (all maps,
        (B, H, W) float32), ``.json`` (metadata and maps); atomically.
        """
        return png_bytes(self.overlay(index))

    def npy_array(self) -> torch.Tensor:
        return self.map

    def html_figures(self) -> list[HtmlFigure]:
        """Input and overlay of each sample, with titles."""
        return [HtmlFigure((data_uri(upscale(self.images[i], 160)), data_uri(self.overlay(i, min_side=160))),
                           self.title(i), width=160, warning=self.unreliable_because(i) or "")
                for i in range(len(self))]


class _Brief(reprlib.Repr):
    """``reprlib`` that shows tensors and arrays by shape and dtype, for short result reprs."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxdict = 4
        self.maxlist = self.maxtuple = self.maxset = 4
        self.maxstring = self.maxother = 36

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            if x.ndim == 0:
                return self.repr1(x.item(), level)
            kind = "tensor" if isinstance(x, torch.Tensor) else "array"
            return f"{kind}({tuple(x.shape)}, {str(x.dtype).removeprefix('torch.')})"
        if isinstance(x, float):
            return f"{x:.4g}"
        return super().repr1(x, level)


_BRIEF = _Brief()


def brief(v: Any) -> str:
    """A short repr of ``v``: tensors and arrays by shape, long strings and containers cut."""
    return _BRIEF.repr(v)


def short_name(name: str, width: int = 24) -> str:
    """``name`` cut to ``width`` characters (a class name in a repr)."""
    return textwrap.shorten(str(name), width, placeholder="...")


def result_repr(obj: Any, fields: Sequence[tuple[str, str | None]]) -> str:
    """``Type(key=text, ...)`` from already shortened texts; fields whose text is ``None`` are left out.

    The result types use it for a ``__repr__`` of a few hundred characters instead of a dump of
    their tensors.
    """
    return f"{type(obj).__name__}(" + ", ".join(f"{k}={v}" for k, v in fields if v is not None) + ")"
