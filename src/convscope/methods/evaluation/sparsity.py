"""Sparsity of attribution maps: the Gini index (Chalasani et al., ICML 2020).

With the absolute attributions of one map sorted ascending, ``a_(1) <= ... <= a_(n)``:
``G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i))``. ``G = 0`` when every pixel gets the same
attribution, ``G = (n - 1) / n`` when one pixel gets all of it; higher is sparser.
"""

from __future__ import annotations

import torch

__all__ = ["gini"]


def gini(maps: torch.Tensor) -> torch.Tensor:
    """(B,) Gini index of ``|maps|`` per map (0 for an all-zero map).

    Shape:
        maps (B, H, W) or (B, N).
    """
    a = torch.as_tensor(maps).detach().double().abs().flatten(1).sort(1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    total = a.sum(1)
    g = ((2 * i - n - 1) * a).sum(1) / (n * total).clamp(min=1e-300)
    return torch.where(total > 0, g, torch.zeros_like(g)).float()
