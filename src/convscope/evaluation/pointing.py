"""Pointing at a planted cue: where does an attribution map's maximum fall?

The score used by the docs, the tests and the demo: for each image, does the arg-max of the map
fall inside the cue mask dilated by ``tolerance`` pixels (``tolerance=0``: strictly inside)? A
small tolerance is the usual pointing-game allowance (Zhang et al. 2016 use 15 px at 224 px);
gradient maps of a bright square peak on its border, one pixel off the square.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cue_mass", "pointing_hits"]


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
