"""Shared helpers of the synthesis tasks: models, pixels, progress, Gram matrices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.core.image import ImageLike
from convscope.models import Preprocessing, as_loaded
from convscope.models.inputs import as_inputs, load_pixels

__all__ = [
    "as_loaded",
    "gram",
    "load_pixels",
    "pixels_from",
    "progress_bar",
]


def pixels_from(
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    pre: Preprocessing,
    *,
    space: str = "model",
    what: str = "images",
) -> torch.Tensor:
    """Images as a (B, C, H, W) float batch of pixels in [0, 1], sized for the model.

    The one input rule (:mod:`convscope.models.inputs`): a tensor is what ``model(x)`` takes
    (``space="model"``, the default, converted back with ``pre.denormalize`` and clipped to
    [0, 1]) or pixels in [0, 1] (``space="pixels"``); anything else is read, converted to the
    model's colour mode and resized/cropped by ``pre``. Always a private copy.
    """
    inp = as_inputs(images, pre, space=space, what=what)
    if space == "model" and isinstance(images, torch.Tensor):
        raw = pre.denormalize(inp.x.float())
        lo, hi = float(raw.min()), float(raw.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(
                f"{what}: this tensor is not an image under the model's preprocessing (as pixels it "
                f"spans [{lo:.3g}, {hi:.3g}], outside [0, 1]); synthesis works on images: check the "
                "preprocessing, or pass pixels in [0, 1] with space='pixels'"
            )
    return inp.pixels.float()


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrices of feature maps, normalised by the number of positions.

    ``G[b, i, j] = sum_p F[b, i, p] F[b, j, p] / (H W)`` (Gatys et al. 2015 use the unnormalised
    sum and divide the loss by ``4 N^2 M^2``; dividing here keeps losses comparable across layers
    and image sizes).

    Shape:
        f: (B, C, H, W); returns (B, C, C).
    """
    b, c, h, w = f.shape
    x = f.reshape(b, c, h * w)
    return torch.bmm(x, x.transpose(1, 2)) / (h * w)


def progress_bar(iterable: Iterable[Any], *, total: int | None = None, desc: str = "",
                 progress: bool | None = None) -> Any:
    """Progress over a loop, tqdm's shape (:class:`~convscope.core.progress.Track`): ``progress=None``
    shows a bar only on a terminal (inside an active Progress: its sub-status), ``False`` nothing,
    ``True`` a bar on a terminal and periodic lines elsewhere."""
    from convscope.core.progress import Track

    return Track(iterable, desc, total=total, enabled=progress, tty_only=True)


def to_numpy_image(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) pixels -> (H, W) or (H, W, 3) float array in [0, 1]."""
    a = t.detach().cpu().float().clamp(0, 1).numpy()
    if a.shape[0] == 1:
        return a[0]
    return np.ascontiguousarray(a[:3].transpose(1, 2, 0))
