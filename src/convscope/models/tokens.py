"""Turn a layer's output into a (B, C, h, w) grid for the CAM family.

Convolutional layers already give (B, C, h, w). Transformers do not:

* ViT-style token sequences (B, N, C): ``N = h * w`` patch tokens, possibly after ``1`` class
  token (``N = 1 + h * w``, the first token is then dropped). ``h`` and ``w`` are the factor pair
  of the patch count whose aspect ratio is closest to the input's.
* Swin-style channels-last maps (B, h, w, C): a 4-D tensor is read as channels-last when its
  dimensions 1 and 2, and not 2 and 3, divide the input size by one common integer stride
  (224 -> 7 x 7 at stride 32). When both readings fit, channels-first wins.

``layout=`` overrides the guess: ``"nchw"``, ``"nhwc"``, ``"tokens"`` (patch tokens only) or
``"cls_tokens"`` (one leading class token).
"""

from __future__ import annotations

import math

import torch

from convscope.core.errors import MethodError

__all__ = ["LAYOUTS", "grid_layout", "to_grid"]

LAYOUTS = ("auto", "nchw", "nhwc", "tokens", "cls_tokens")


def _stride_fits(h: int, w: int, size: tuple[int, int]) -> bool:
    H, W = size
    if h < 1 or w < 1 or H % h or W % w:
        return False
    return H // h == W // w


def _grid_shape(n: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """The factor pair h * w == n with h / w closest to the input's aspect ratio."""
    if n < 1:
        return None
    ratio = size[0] / size[1]
    best: tuple[float, tuple[int, int]] | None = None
    for h in range(1, int(math.isqrt(n)) + 1):
        if n % h:
            continue
        for hh, ww in ((h, n // h), (n // h, h)):
            err = abs(math.log((hh / ww) / ratio))
            if best is None or err < best[0]:
                best = (err, (hh, ww))
    if best is None or best[0] > math.log(1.5):  # no factor pair near the input's shape
        return None
    return best[1]


def grid_layout(shape: tuple[int, ...], size: tuple[int, int], layout: str = "auto") -> tuple[str, int, int]:
    """Decide how to read an activation of ``shape`` for an input of spatial ``size``.

    Returns:
        (layout, h, w) with layout one of ``nchw``, ``nhwc``, ``tokens``, ``cls_tokens``.

    Raises:
        MethodError: the shape cannot be read as a spatial grid.
    """
    if layout not in LAYOUTS:
        raise MethodError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if len(shape) == 4:
        if layout in ("auto", "nchw", "nhwc"):
            if layout == "nhwc" or (
                layout == "auto"
                and not _stride_fits(shape[2], shape[3], size)
                and _stride_fits(shape[1], shape[2], size)
            ):
                return "nhwc", shape[1], shape[2]
            return "nchw", shape[2], shape[3]
    elif len(shape) == 3:
        n = shape[1]
        if layout in ("auto", "tokens"):
            g = _grid_shape(n, size) if math.isqrt(n) ** 2 == n or layout == "tokens" else None
            if g is not None:
                return "tokens", g[0], g[1]
        if layout in ("auto", "cls_tokens"):
            g = _grid_shape(n - 1, size)
            if g is not None:
                return "cls_tokens", g[0], g[1]
        if layout == "auto":  # non-square token grids, e.g. a 2:1 input
            g = _grid_shape(n, size)
            if g is not None:
                return "tokens", g[0], g[1]
    raise MethodError(
        f"cannot read a layer output of shape {tuple(shape)} as a spatial map for a "
        f"{size[0]}x{size[1]} input (layout={layout!r}); CAM methods need (B, C, h, w), "
        "(B, h, w, C) or (B, [1 +] h*w, C) tokens: pick a convolutional or token layer, or pass "
        "layout='nchw' | 'nhwc' | 'tokens' | 'cls_tokens'"
    )


def to_grid(t: torch.Tensor, layout: str, h: int, w: int) -> torch.Tensor:
    """Reshape ``t`` read with ``layout`` (from :func:`grid_layout`) to (B, C, h, w).

    Shape:
        t: (B, C, h, w), (B, h, w, C) or (B, N, C); returns (B, C, h, w).
    """
    if layout == "nchw":
        return t
    if layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    if layout == "cls_tokens":
        t = t[:, 1:]
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
