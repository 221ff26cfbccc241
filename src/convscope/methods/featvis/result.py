"""``Visualization``: a feature-visualisation result that renders itself.

Holds a batch of images (pixels in [0, 1], or normalised maps drawn with a colour map), one
title per image, and what produced them. ``.image(i)`` gives one image, ``.grid()`` all of them
with titles, ``.save()`` writes ``.png`` (the grid), ``.npy`` (the raw images) or ``.json``
(metadata and score history), and notebooks show it through ``_repr_png_`` / ``_repr_html_``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convscope.core.errors import InputError
from convscope.core.result import HtmlFigure, Result, batch_slice, data_uri, jsonable, png_bytes
from convscope.core.results import brief, result_repr, upscale

__all__ = ["Visualization"]


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


@dataclass(frozen=True)
class Visualization(Result):
    """A batch of B visualisations.

    Attributes:
        images: (B, C, H, W) float32 in [0, 1] on the CPU (C = 1 or 3).
        titles: one title per image.
        kind: what made it: ``"objective"``, ``"class"``, ``"layer"``, ``"deepdream"``,
            ``"filters"``, ``"activations"``.
        objective: readable description of the objective (or of the source).
        model_name: the model's spec or class name.
        model_info: weights, preprocessing, class names and assumptions (``LoadedModel.info()``).
        layer: the layer involved, if one.
        cmap: colour map for single-channel images that are maps, not pictures (``None``: gray).
        history: (steps, B) objective per step, if optimised.
        scores: (B,) final objective values without transforms, if optimised.
        probabilities: (B, K) softmax of the model on the final images, if computed.
        class_names: the model's class names (for probabilities).
        options: the settings used.
    """

    images: torch.Tensor
    titles: tuple[str, ...]
    kind: str = "objective"
    objective: str = ""
    model_name: str = ""
    model_info: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    cmap: str | None = None
    history: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise InputError(f"Visualization images must be (B, C, H, W), got {tuple(self.images.shape)}")
        if len(self.titles) != self.images.shape[0]:
            raise InputError(f"{len(self.titles)} titles for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> Visualization:
        """Image ``i`` alone (a batch of one)."""
        sl = batch_slice(i, len(self), "image")
        return replace(
            self,
            images=self.images[sl],
            titles=self.titles[sl],
            history=None if self.history is None else self.history[:, sl],
            scores=None if self.scores is None else self.scores[sl],
            probabilities=None if self.probabilities is None else self.probabilities[sl],
        )

    def __repr__(self) -> str:
        """What made it, the images' shape and titles, and the options (no pixel dump)."""
        return result_repr(self, [
            ("kind", repr(self.kind)),
            ("objective", brief(self.objective) if self.objective else None),
            ("model", brief(self.model_name)),
            ("layer", repr(self.layer) if self.layer else None),
            ("images", str(tuple(self.images.shape))),
            ("titles", brief(self.titles)),
            ("options", brief(self.options) if self.options else None),
        ])

    # --- pictures -----------------------------------------------------------------------------
    def array(self, index: int = 0) -> np.ndarray:
        """Image ``index`` as an (H, W, 3) float array in [0, 1] (maps coloured with ``cmap``)."""
        a = self.images[index].detach().float().clamp(0, 1).numpy()
        if a.shape[0] == 1:
            if self.cmap:
                import matplotlib

                return matplotlib.colormaps[self.cmap](a[0])[..., :3]
            a = np.repeat(a, 3, axis=0)
        return np.ascontiguousarray(a[:3].transpose(1, 2, 0))

    def image(self, index: int = 0, *, min_side: int = 0) -> Image.Image:
        """Image ``index`` as a PIL RGB image, upscaled (nearest) so its short side is >= ``min_side``."""
        return upscale(self.array(index), min_side)

    def grid(self, *, ncols: int | None = None, cell: int = 128, titles: bool = True,
             pad: int = 4) -> Image.Image:
        """All images in a grid, each scaled to ``cell`` pixels wide, with its title above.

        Small images are enlarged with nearest neighbours, so pixels stay visible.
        """
        n = len(self)
        ncols = ncols or min(n, 8)
        nrows = math.ceil(n / ncols)
        h, w = self.images.shape[-2:]
        cw = cell
        ch = max(1, round(cell * h / w))
        font = _font(11)
        lines = max((len(_wrap(t, cw)) for t in self.titles), default=1) if titles else 0
        th = 13 * lines + 2 if titles else 0
        out = Image.new("RGB", (ncols * (cw + pad) + pad, nrows * (ch + th + pad) + pad), "white")
        draw = ImageDraw.Draw(out)
        for i in range(n):
            r, c = divmod(i, ncols)
            x0 = pad + c * (cw + pad)
            y0 = pad + r * (ch + th + pad)
            im = self.image(i)
            resample = Image.Resampling.NEAREST if im.width <= cw else Image.Resampling.BILINEAR
            out.paste(im.resize((cw, ch), resample), (x0, y0 + th))
            if titles:
                for k, line in enumerate(_wrap(self.titles[i], cw)):
                    draw.text((x0, y0 + 13 * k), line, fill="black", font=font)
        return out

    # --- saving -------------------------------------------------------------------------------
    def to_dict(self, *, include_images: bool = False) -> dict[str, Any]:
        """Metadata, scores and history as JSON-ready data (images as nested lists if asked)."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "objective": self.objective,
            "model": self.model_name,
            "model_info": self.model_info,
            "layer": self.layer,
            "titles": list(self.titles),
            "shape": list(self.images.shape),
            "options": {k: jsonable(v) for k, v in self.options.items()},
        }
        if self.scores is not None:
            d["scores"] = self.scores.tolist()
        if self.history is not None:
            d["history"] = self.history.tolist()
        if self.probabilities is not None:
            p = self.probabilities
            top = p.argmax(1).tolist()
            d["predictions"] = [
                {"class": int(t), "name": self.class_names[t] if t < len(self.class_names) else str(t),
                 "probability": float(p[i, t])}
                for i, t in enumerate(top)
            ]
        if include_images:
            d["images"] = self.images.tolist()
        return d

    save_formats = (".png", ".npy", ".json")

    def png(self, *, index: int | None = None) -> bytes:
        """The grid (or image ``index`` alone) as PNG bytes.

        ``save(path, index=...)`` writes by extension: ``.png`` (this), ``.npy`` ((B, C, H, W)
        float32 images), ``.json`` (metadata, scores, history); atomically.
        """
        return png_bytes(self.grid() if index is None else self.image(index, min_side=128))

    def npy_array(self) -> torch.Tensor:
        return self.images

    def html_figures(self) -> list[HtmlFigure]:
        """Each image with its title."""
        return [HtmlFigure((data_uri(self.image(i, min_side=128)),), self.titles[i], width=128,
                           pixelated=True) for i in range(len(self))]


def _wrap(text: str, width_px: int, char_px: int = 6) -> list[str]:
    per = max(4, width_px // char_px)
    words, lines, cur = text.split(), [], ""
    for wd in words:
        if cur and len(cur) + 1 + len(wd) > per:
            lines.append(cur)
            cur = wd
        else:
            cur = f"{cur} {wd}".strip()
    if cur:
        lines.append(cur)
    return lines or [""]
