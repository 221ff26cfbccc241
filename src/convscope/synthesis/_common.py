"""Shared helpers of the synthesis tasks: models, pixels, progress, Gram matrices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..image import ImageLike, load_image, pil_to_tensor
from ..models import LoadedModel, Preprocessing, load_model

__all__ = [
    "as_loaded",
    "gram",
    "load_pixels",
    "pixels_from",
    "progress_bar",
]


def as_loaded(
    model: str | nn.Module | LoadedModel, preprocessing: Preprocessing | None = None
) -> LoadedModel:
    """A :class:`LoadedModel` for a spec, a plain module or a loaded model.

    A plain ``nn.Module`` gets ``preprocessing`` (default: ImageNet normalisation, 224 px).
    """
    lm = load_model(model, preprocessing=preprocessing) if not isinstance(model, LoadedModel) else model
    if preprocessing is not None and lm.preprocessing != preprocessing:
        lm = LoadedModel(lm.model, preprocessing, lm.class_names, lm.default_layer, lm.name,
                         lm.card, lm.generic)
    return lm


def _check_pixels(t: torch.Tensor, what: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise InputError(f"{what}: a tensor must hold float pixels in [0, 1], got {t.dtype}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise InputError(f"{what}: expected a (C, H, W) or (B, C, H, W) tensor, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{what}: the tensor holds NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{what}: pixels must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; pass space='model' for "
            "normalised model inputs"
        )
    return t.detach().clone().float()


def pixels_from(
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    pre: Preprocessing,
    *,
    space: str = "pixels",
    what: str = "images",
) -> torch.Tensor:
    """Images as a (B, C, H, W) float batch of pixels in [0, 1], sized for the model.

    A tensor is taken as pixels in [0, 1] (``space="pixels"``, the default) or as normalised
    model inputs (``space="model"``, converted back with ``pre.denormalize``); anything else is
    read, converted to the model's colour mode and resized/cropped by ``pre``. Always a private copy.
    """
    if space not in ("pixels", "model"):
        raise InputError(f"space must be 'pixels' or 'model', got {space!r}")
    if isinstance(images, torch.Tensor):
        t = images.detach()
        if space == "model":
            if t.ndim == 3:
                t = t.unsqueeze(0)
            t = pre.denormalize(t.float()).clamp(0, 1)
        t = _check_pixels(t, what)
        if t.shape[1] != pre.channels:
            raise InputError(
                f"{what}: the model expects {pre.channels} channel(s), the tensor has {t.shape[1]}"
            )
        return t
    items: list[Any] = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError(f"no {what} given")
    return torch.stack([pil_to_tensor(pre.to_display(im)) for im in items])


def load_pixels(
    image: ImageLike | torch.Tensor,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    what: str = "image",
) -> torch.Tensor:
    """One image as a (1, C, H, W) float tensor of pixels in [0, 1].

    Args:
        image: a path, PIL image, array, or a (C, H, W) / (1, C, H, W) tensor of pixels.
        size: ``None`` keeps the size; an int scales the shorter side to it (aspect kept);
            ``(h, w)`` resizes exactly.
        channels: 1 or 3 to convert the colour mode (``None`` keeps it).
    """
    if isinstance(image, torch.Tensor):
        t = _check_pixels(image, what)
        if t.shape[0] != 1:
            raise InputError(f"{what}: expected one image, got a batch of {t.shape[0]}")
        if channels is not None and t.shape[1] != channels:
            if channels == 3 and t.shape[1] == 1:
                t = t.expand(-1, 3, -1, -1).clone()
            elif channels == 1 and t.shape[1] == 3:
                w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                t = (t * w).sum(1, keepdim=True)
            else:
                raise InputError(f"{what}: cannot convert {t.shape[1]} channels to {channels}")
        if size is not None:
            hw = _target_size(size, t.shape[-2], t.shape[-1])
            t = torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=False,
                                                antialias=True).clamp(0, 1)
        return t
    img = load_image(image)
    if channels is not None:
        img = img.convert("L" if channels == 1 else "RGB")
    if size is not None:
        from PIL import Image

        oh, ow = _target_size(size, img.height, img.width)
        img = img.resize((ow, oh), Image.Resampling.BICUBIC)
    return pil_to_tensor(img).unsqueeze(0).clamp(0, 1)


def _target_size(size: int | tuple[int, int], h: int, w: int) -> tuple[int, int]:
    if isinstance(size, int):
        if size < 1:
            raise InputError(f"size must be positive, got {size}")
        s = size / min(h, w)
        return max(1, round(h * s)), max(1, round(w * s))
    hh, ww = size
    if hh < 1 or ww < 1:
        raise InputError(f"size must be positive, got {size}")
    return int(hh), int(ww)


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
    """A tqdm bar; ``progress=None`` shows it only on a terminal, ``False`` never, ``True`` always."""
    from tqdm.auto import tqdm

    disable: bool | None = None if progress is None else not progress
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False)


def to_numpy_image(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) pixels -> (H, W) or (H, W, 3) float array in [0, 1]."""
    a = t.detach().cpu().float().clamp(0, 1).numpy()
    if a.shape[0] == 1:
        return a[0]
    return np.ascontiguousarray(a[:3].transpose(1, 2, 0))
