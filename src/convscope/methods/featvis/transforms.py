"""Transforms (applied to the image before the model sees it) and regularisers.

Transformation robustness (Olah et al. 2017; Mordvintsev et al. 2015): if the objective must
rise although the image is randomly shifted, scaled and rotated at every step, the optimiser
cannot rely on pixel-exact high-frequency patterns. A transform is any callable
``t(x) -> x'`` on a (B, C, H, W) batch of pixels; the output may change size. Randomness comes
from torch's global RNG, which :func:`convscope.engines.optimize.optimize` seeds, so runs are
reproducible. One draw applies to the whole batch.

Regularisers:

* L2 and total variation are image measures in :mod:`.objectives` (``l2()``,
  ``total_variation()``), subtracted from the objective with a weight.
* :func:`blur_every` blurs the image every N steps (Yosinski et al. 2015's periodic Gaussian
  blur) through the parameterisation's ``load_image``, so it works for pixels and spectra alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convscope.core.errors import InputError
from convscope.models.inputs import gaussian_blur as _blur

__all__ = [
    "Transform",
    "blur",
    "blur_every",
    "compose",
    "gaussian_blur",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "standard_transforms",
]

Transform = Callable[[torch.Tensor], torch.Tensor]


def _choice(n: int) -> int:
    return int(torch.randint(n, (1,)).item())


def compose(*transforms: Transform | Sequence[Transform] | None) -> Transform:
    """One transform applying ``transforms`` in order (``None`` entries are skipped)."""
    flat: list[Transform] = []
    for t in transforms:
        if t is None:
            continue
        if isinstance(t, (list, tuple)):
            flat.extend(x for x in t if x is not None)
        else:
            flat.append(t)  # type: ignore[arg-type]

    def composed(x: torch.Tensor) -> torch.Tensor:
        for t in flat:
            x = t(x)
        return x

    composed.transforms = tuple(flat)  # type: ignore[attr-defined]
    return composed


def jitter(d: int) -> Transform:
    """Random crop of (H - d, W - d): shifts the image by 0..d pixels (Lucid's ``jitter``)."""
    if d < 0:
        raise InputError(f"jitter must be >= 0, got {d}")

    def t(x: torch.Tensor) -> torch.Tensor:
        if d == 0:
            return x
        h, w = x.shape[-2:]
        if d >= min(h, w):
            raise InputError(f"jitter {d} is too large for a {h}x{w} image")
        dy, dx = _choice(d + 1), _choice(d + 1)
        return x[..., dy:dy + h - d, dx:dx + w - d]

    return t


def pad(w: int, *, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad ``w`` pixels on every side (``mode``: constant, reflect or replicate)."""
    if w < 0:
        raise InputError(f"pad must be >= 0, got {w}")

    def t(x: torch.Tensor) -> torch.Tensor:
        if w == 0:
            return x
        if mode == "constant":
            return F.pad(x, (w, w, w, w), mode="constant", value=value)
        return F.pad(x, (w, w, w, w), mode=mode)

    return t


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor drawn from ``scales`` (bilinear)."""
    s = [float(v) for v in scales]
    if not s or min(s) <= 0:
        raise InputError("random_scale needs positive scale factors")

    def t(x: torch.Tensor) -> torch.Tensor:
        k = s[_choice(len(s))]
        if k == 1.0:
            return x
        h, w = x.shape[-2:]
        size = (max(1, round(h * k)), max(1, round(w * k)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return t


def random_rotate(angles: Sequence[float], *, fill: float = 0.5) -> Transform:
    """Rotate about the centre by an angle in degrees drawn from ``angles`` (bilinear, ``fill`` outside)."""
    a = [float(v) for v in angles]
    if not a:
        raise InputError("random_rotate needs at least one angle")

    def t(x: torch.Tensor) -> torch.Tensor:
        deg = a[_choice(len(a))]
        if deg == 0.0:
            return x
        r = math.radians(deg)
        h, w = x.shape[-2:]
        c, s = math.cos(r), math.sin(r)
        # normalised coordinates: account for the aspect ratio so the rotation is rigid
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out + fill

    return t


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (:func:`convscope.models.inputs.gaussian_blur`).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W).
    """
    return _blur(x, sigma, padding="reflect")


def blur(sigma: float) -> Transform:
    """Gaussian blur with standard deviation ``sigma`` pixels, as a transform."""
    if sigma < 0:
        raise InputError(f"blur sigma must be >= 0, got {sigma}")
    return lambda x: gaussian_blur(x, sigma)


def standard_transforms(size: int = 224) -> Transform:
    """Lucid's standard transforms, scaled to the image size (pad, jitter, scale, rotate, jitter).

    At 224 px: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4. Small images
    (the 32 px digits) get proportionally smaller shifts.
    """
    f = size / 224.0
    p, j1, j2 = max(1, round(12 * f)), max(1, round(8 * f)), max(1, round(4 * f))
    return compose(
        pad(p, mode="constant", value=0.5),
        jitter(j1),
        random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(j2),
    )


def blur_every(n: int, sigma: float = 0.5) -> Callable[[int, nn.Module], None]:
    """A post-step hook: every ``n`` steps, replace the image by its Gaussian blur.

    Works for any parameterisation with ``load_image`` (see :mod:`.param`).
    """
    if n < 1:
        raise InputError(f"blur_every needs n >= 1, got {n}")

    def hook(step: int, param: nn.Module) -> None:
        if (step + 1) % n:
            return
        load = getattr(param, "load_image", None)
        if load is None:
            raise InputError(f"{type(param).__name__} has no load_image(); cannot blur it every step")
        load(gaussian_blur(param(), sigma))

    return hook
