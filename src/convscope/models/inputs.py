"""The input core: one rule for what an input means, used by every facade.

**The rule.** A tensor is what the model takes: ``model(x)`` (``space="model"``, the default
everywhere: explain, evaluation, featvis, synthesis, dataset views, report, serve). Pass
``space="pixels"`` to hand over pixels in [0, 1] instead; they are normalised with the model's
preprocessing. Anything that is not a tensor (a path, a PIL image, an array) is an image: it is
read, converted to the model's colour mode, resized and cropped, and normalised by the
preprocessing. So the same tensor and model give the same probabilities in every task.

Every input is checked once, here: float, (C, H, W) or (B, C, H, W), the model's channel count,
finite (NaN and infinite values are refused), and pixels in [0, 1] for ``space="pixels"``.

**Baselines** (what replaces hidden or removed pixels in occlusion, RISE, LIME, Kernel SHAP,
integrated gradients and the deletion/insertion curves) are defined in pixel space, so their
meaning does not depend on the model's normalisation: see :func:`baseline`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from convscope.core.errors import InputError
from convscope.core.image import ImageLike
from convscope.core.image import load_image as _load_image
from convscope.core.image import pil_to_tensor as _pil_to_tensor
from convscope.core.result import Deferred, LazyField
from convscope.models.preprocessing import Preprocessing, display_batch

__all__ = [
    "BASELINES",
    "SPACES",
    "Inputs",
    "as_inputs",
    "baseline",
    "check_space",
    "gaussian_blur",
    "load_pixels",
]

Space = Literal["model", "pixels"]
SPACES = ("model", "pixels")

#: The named baselines, in pixel space; a number is a grey level in [0, 1], a tensor is in model space.
BASELINES = {
    "black": "black pixels (0)",
    "zero": "black pixels (0), the same as 'black'",
    "white": "white pixels (1)",
    "grey": "mid-grey pixels (0.5)",
    "mean": "the image's own mean colour, per channel",
    "blur": "a Gaussian blur of the image",
    "uniform": "seeded uniform noise pixels in [0, 1]",
}


def check_space(space: str) -> Space:
    """``space`` if it is ``"model"`` or ``"pixels"``, else a one-line error."""
    if space not in SPACES:
        raise InputError(f"space must be 'model' (what model(x) takes) or 'pixels' ([0, 1]), got {space!r}")
    return space  # type: ignore[return-value]


@dataclass(frozen=True)
class Inputs:
    """A batch read by the input core.

    Attributes:
        x: (B, C, H, W) model inputs, float, a private copy (never the caller's tensor).
        pixels: (B, C, H, W) the same images as pixels (denormalised, clipped to [0, 1]).
        display: (B, H, W, 3) display images in [0, 1].
        tensors: the caller's tensors (for state guards that restore their ``.grad``).

    For a tensor input, ``pixels`` and ``display`` are made on first read only (most calls
    never show a picture); :func:`~convscope.core.result.deferred_value` hands ``display`` on to a
    result without making it.
    """

    x: torch.Tensor
    pixels: torch.Tensor = LazyField()  # type: ignore[assignment]
    display: np.ndarray = LazyField()  # type: ignore[assignment]
    tensors: list[torch.Tensor] = field(default_factory=list)


def _check_tensor(t: torch.Tensor, pre: Preprocessing, space: str, what: str,
                  any_channels: bool) -> torch.Tensor:
    if not t.is_floating_point():
        raise InputError(
            f"{what}: a tensor must be float "
            f"({'pixels in [0, 1]' if space == 'pixels' else 'model inputs'}), "
            f"got {t.dtype}; convert with .float() (and /255 for 8-bit pixels with space='pixels')"
        )
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[0] == 0:
        raise InputError(f"{what}: expected a (C, H, W) or (B, C, H, W) tensor, got {tuple(t.shape)}")
    if t.shape[1] != pre.channels and not any_channels:
        raise InputError(
            f"{what}: the model expects {pre.channels} channel(s), the tensor has {t.shape[1]}"
        )
    if t.numel() == 0:
        return t
    # one pass for the finiteness check and the pixel range (aminmax propagates NaN; a tenth of
    # isfinite(t).all()'s time, which makes a bool copy and reads it again)
    lo_t, hi_t = torch.aminmax(t)
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n = int((~torch.isfinite(t)).sum())
        raise InputError(f"{what}: the tensor holds {n} NaN or infinite value(s); pass finite inputs")
    if space == "pixels":
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{what}: pixels must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; pass space='model' "
                "for inputs that are already what model(x) takes"
            )
    return t


def _tensor_pixels(t: torch.Tensor, *, pre: Preprocessing, space: str) -> torch.Tensor:
    """Pixels in [0, 1] of a checked tensor input ``t`` (min-max scaled when the normalisation
    is unknown: its channel count differs from the preprocessing's)."""
    if t.shape[1] != len(pre.mean):
        lo = t.amin((1, 2, 3), keepdim=True)
        return (t - lo) / (t.amax((1, 2, 3), keepdim=True) - lo).clamp(min=1e-12)
    return t if space == "pixels" else pre.denormalize(t).clamp(0, 1)


def _tensor_display(t: torch.Tensor, *, pre: Preprocessing, space: str) -> np.ndarray:
    """Display images of a checked tensor input (:func:`_tensor_pixels` as (B, H, W, 3))."""
    return display_batch(_tensor_pixels(t, pre=pre, space=space).cpu().float())


def as_inputs(
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    pre: Preprocessing,
    *,
    space: str = "model",
    what: str = "images",
    any_channels: bool = False,
) -> Inputs:
    """Read images or a tensor as a batch, by the rule in the module docstring.

    Args:
        images: a path, PIL image, array, a list of those, or a tensor.
        pre: the model's preprocessing.
        space: how to read a tensor: ``"model"`` (default) or ``"pixels"``.
        what: how error messages name the input.
        any_channels: accept a tensor whose channel count differs from ``pre.channels`` (a
            plain module whose preprocessing was not stated); it is displayed min-max scaled.

    Raises:
        InputError: wrong type, shape, channel count, non-finite values, pixels out of range.
    """
    space = check_space(space)
    if isinstance(images, torch.Tensor):
        t = _check_tensor(images.detach(), pre, space, what, any_channels)
        t = t.clone()
        x = pre.normalize(t) if space == "pixels" and t.shape[1] == len(pre.mean) else t
        pixels = Deferred(functools.partial(_tensor_pixels, pre=pre, space=space), t)
        display = Deferred(functools.partial(_tensor_display, pre=pre, space=space), t)
        return Inputs(x, pixels, display, [images])
    items: list[Any] = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError(f"no {what} given")
    from convscope.core.image import pil_to_tensor

    pix = torch.stack([pil_to_tensor(pre.to_display(im)) for im in items])
    tensors = [im for im in items if isinstance(im, torch.Tensor)]
    return Inputs(pre.normalize(pix), pix, display_batch(pix), tensors)


def gaussian_blur(x: torch.Tensor, sigma: float, *, padding: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) or (C, H, W) batch, radius ``ceil(3 sigma)`` (at least 1).

    Linear and per channel, so blurring model inputs equals normalising blurred pixels. The one
    Gaussian blur of convscope: baselines use replicate padding (edges repeated); feature
    visualisation's blur transform uses ``padding="reflect"`` (mirrored edges, replicate where
    the radius is not smaller than the image). ``sigma <= 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    one = x.ndim == 3
    y = x[None] if one else x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=y.dtype, device=y.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = y.shape[1]
    mode = "reflect" if padding == "reflect" and r < min(y.shape[-2:]) else "replicate"
    y = F.pad(y, (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0] if one else y


def baseline(
    x: torch.Tensor,
    kind: str | float | torch.Tensor = "black",
    pre: Preprocessing | None = None,
    *,
    sigma: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The image that replaces hidden or removed parts of ``x``, returned in model space.

    Named baselines and numbers are pixel values, whatever the model's normalisation: ``"black"``
    (also ``"zero"``) is black for a model on [0, 1] pixels and for an ImageNet-normalised model
    alike. ``"mean"`` (the image's mean colour) and ``"blur"`` are the same in either space.

    Args:
        x: (B, C, H, W) or (C, H, W) inputs in model space.
        kind: a name from :data:`BASELINES`; a number: a grey level in [0, 1] (pixel space); a
            tensor broadcastable to ``x``: taken as it is (model space, like every tensor).
        pre: the model's preprocessing (``None``: inputs are pixels, mean 0 and std 1).
        sigma: blur width in pixels for ``"blur"`` (default: 1/45 of the longer side, at least 1).
        seed: seeds ``"uniform"``.

    Shape:
        returns the shape of ``x``.
    """
    def to_model(p: torch.Tensor) -> torch.Tensor:
        if pre is None or p.shape[-3] != len(pre.mean):
            return p
        return pre.normalize(p)

    if isinstance(kind, torch.Tensor):
        b = kind.detach().to(device=x.device, dtype=x.dtype)
        try:
            return b.expand_as(x).clone()
        except RuntimeError:
            raise InputError(
                f"a baseline tensor of shape {tuple(kind.shape)} does not fit inputs {tuple(x.shape)}"
            ) from None
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        v = float(kind)
        if not 0.0 <= v <= 1.0:  # also refuses nan
            raise InputError(f"a numeric baseline is a grey level in [0, 1] (pixel space), got {kind}")
        return to_model(torch.full_like(x, v))
    if kind in ("black", "zero"):
        return to_model(torch.zeros_like(x))
    if kind == "white":
        return to_model(torch.ones_like(x))
    if kind == "grey":
        return to_model(torch.full_like(x, 0.5))
    if kind == "mean":
        return x.mean((-2, -1), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        s = float(sigma) if sigma is not None else max(1.0, max(x.shape[-2:]) / 45.0)
        if not (math.isfinite(s) and s > 0):
            raise InputError(f"blur sigma must be a positive number of pixels, got {sigma}")
        return gaussian_blur(x, s)
    if kind == "uniform":
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(x.shape[-3:], generator=g).to(device=x.device, dtype=x.dtype)
        return to_model(u.expand_as(x).clone())
    raise InputError(
        f"unknown baseline {kind!r}; use {', '.join(repr(k) for k in BASELINES)}, a grey level in "
        "[0, 1] or a model-space tensor"
    )


def load_pixels(
    image: ImageLike | torch.Tensor,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    what: str = "image",
    pre: Preprocessing | None = None,
    space: str = "model",
) -> torch.Tensor:
    """One image as a (1, C, H, W) float tensor of pixels in [0, 1].

    Args:
        image: a path, PIL image, array, or a (C, H, W) / (1, C, H, W) tensor: model inputs for
            ``pre`` (``space="model"``, the one rule of :mod:`convscope.models.inputs`) or pixels in
            [0, 1] (``space="pixels"``; also when there is no model, ``pre=None``).
        size: ``None`` keeps the size; an int scales the shorter side to it (aspect kept);
            ``(h, w)`` resizes exactly.
        channels: 1 or 3 to convert the colour mode (``None`` keeps it).
    """
    if isinstance(image, torch.Tensor):
        if pre is None:
            space = "pixels"
            pre = Preprocessing(size=tuple(image.shape[-2:]), channels=int(image.shape[-3]),  # type: ignore[arg-type]
                                mean=(0.0,) * int(image.shape[-3]), std=(1.0,) * int(image.shape[-3]))
        t = as_inputs(image, pre, space=space, what=what, any_channels=True).pixels.float()
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
    img = _load_image(image)
    if channels is not None:
        img = img.convert("L" if channels == 1 else "RGB")
    if size is not None:
        from PIL import Image

        oh, ow = _target_size(size, img.height, img.width)
        img = img.resize((ow, oh), Image.Resampling.BICUBIC)
    return _pil_to_tensor(img).unsqueeze(0).clamp(0, 1)


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

