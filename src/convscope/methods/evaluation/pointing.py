"""Pointing game and energy-based pointing game: does the map point at the right region?

Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016): a hit
when the arg-max of the map falls inside the ground-truth region dilated by ``tolerance`` pixels
(``tolerance=0``: strictly inside; Zhang et al. use 15 px at 224 px). Gradient maps of a bright
square peak on its border, one pixel off the square, so the planted-cue benchmark reports both.
When several pixels share the maximum, the first in row-major order counts.

Energy-based pointing game (Wang et al., "Score-CAM", CVPR-W 2020): the share of the map's
positive mass inside the region, ``sum_{ij in R} max(L_ij, 0) / sum_ij max(L_ij, 0)``
(:func:`cue_mass` is the same score under the planted-cue benchmark's name).

Regions are boolean masks (B, H, W) or boxes: a (B, 4) tensor of ``(x0, y0, x1, y1)`` pixel
corners (x1 and y1 exclusive), or one list of such boxes per image (their union is the region).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from convscope.core.errors import InputError

__all__ = [
    "RegionSpec",
    "boxes_to_masks",
    "check_box",
    "cue_mass",
    "energy_pointing_game",
    "pointing_game",
    "pointing_hits",
    "region_masks",
]

RegionSpec = torch.Tensor | Sequence[Sequence[Sequence[float]]]


def _dilate(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    if tolerance <= 0:
        return masks.bool()
    k = 2 * tolerance + 1
    return F.max_pool2d(masks.float()[:, None], k, stride=1, padding=tolerance)[:, 0] > 0


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """(B,) bool: the map's maximum lies in the (dilated) mask.

    Shape:
        maps (B, H, W), masks (B, H, W) bool.
    """
    m = _dilate(masks, tolerance).flatten(1)
    idx = maps.flatten(1).argmax(1)
    return m.gather(1, idx[:, None])[:, 0]


def cue_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) share of the positive attribution mass inside the mask."""
    pos = maps.clamp(min=0).flatten(1)
    return (pos * masks.flatten(1).float()).sum(1) / pos.sum(1).clamp(min=1e-12)


def check_box(box: Sequence[Any]) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` as four finite numbers with ``x0 < x1`` and ``y0 < y1`` (the one
    check of boxes: the API and the CLI's ``--boxes``).

    Raises:
        InputError: not four numbers, a nan or infinite value, or an empty or inverted box.
    """
    try:
        vals = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 4:
        raise InputError(f"a box is (x0, y0, x1, y1), got {box!r}")
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"box {box!r} has a nan or infinite corner; give pixel coordinates")
    x0, y0, x1, y1 = vals
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"empty or inverted box {box!r}: need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def boxes_to_masks(boxes: RegionSpec, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool masks from boxes ``(x0, y0, x1, y1)`` (pixel corners, end exclusive).

    ``boxes`` is a (B, 4) tensor / nested list (one box per image) or a list with a list of boxes
    per image. Boxes are clipped to the image.
    """
    h, w = size
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(f"a box tensor must be (B, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        per_image: list[list[Any]] = [[b.tolist()] for b in boxes]
    else:
        per_image = []
        for item in boxes:
            item = list(item)
            if len(item) == 4 and all(isinstance(v, (int, float)) for v in item):
                per_image.append([item])
            else:
                per_image.append([list(b) for b in item])
    rows = torch.arange(h).view(-1, 1)
    cols = torch.arange(w).view(1, -1)
    out = torch.zeros(len(per_image), h, w, dtype=torch.bool)
    for i, bxs in enumerate(per_image):
        for b in bxs:
            x0, y0, x1, y1 = check_box(b)
            out[i] |= (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return out


def region_masks(regions: RegionSpec, size: tuple[int, int], n: int) -> torch.Tensor:
    """Bool masks (n, H, W) from masks or boxes, checked against ``n`` maps of ``size``."""
    if isinstance(regions, torch.Tensor) and regions.ndim == 3:
        masks = regions.bool()
    elif isinstance(regions, torch.Tensor) and regions.ndim == 4 and regions.shape[1] == 1:
        masks = regions[:, 0].bool()
    else:
        masks = boxes_to_masks(regions, size)
    if masks.shape != (n, *size):
        raise InputError(f"regions give masks of shape {tuple(masks.shape)}, expected {(n, *size)}")
    if not masks.flatten(1).any(1).all():
        raise InputError("every image needs a non-empty region")
    return masks


def pointing_game(maps: torch.Tensor, regions: RegionSpec, tolerance: int = 0) -> torch.Tensor:
    """(B,) bool hits of the pointing game against masks or boxes.

    Shape:
        maps (B, H, W); regions (B, H, W) masks or boxes (see module docstring).
    """
    maps = torch.as_tensor(maps).detach()
    masks = region_masks(regions, (int(maps.shape[-2]), int(maps.shape[-1])), maps.shape[0]).to(maps.device)
    return pointing_hits(maps, masks, tolerance)


def energy_pointing_game(maps: torch.Tensor, regions: RegionSpec) -> torch.Tensor:
    """(B,) share of positive attribution energy inside the region (in [0, 1]).

    Shape:
        maps (B, H, W); regions (B, H, W) masks or boxes.
    """
    maps = torch.as_tensor(maps).detach().float()
    masks = region_masks(regions, (int(maps.shape[-2]), int(maps.shape[-1])), maps.shape[0]).to(maps.device)
    return cue_mass(maps, masks)
