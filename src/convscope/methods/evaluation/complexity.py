"""Complexity metrics: how concentrated is a map? (No model needed.)

* :func:`sparseness`: the Gini index of ``|a|`` (Chalasani et al., "Concise Explanations of
  Neural Networks using Adversarial Training", ICML 2020); **higher is better** (sparser).
* :func:`entropy_complexity`: the entropy of ``|a|`` as a distribution over pixels (Bhatt et al.,
  "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020); **lower is better**.
* :func:`effective_complexity`: the number of pixels whose ``|a|`` exceeds ``eps`` times the
  map's maximum (Nguyen and Martinez, "On Quantitative Aspects of Model Interpretability", 2020);
  **lower is better**.

Each map is scored on its own. Quantus 0.6.0 divides the whole batch by the batch's largest
value first (``normalise_by_max`` over every axis), which leaves the scale-free sparseness and
entropy alone but makes its effective complexity of one map depend on the other maps of the batch;
here ``eps`` is relative to each map's own maximum (Quantus fed one map at a time agrees).
"""

from __future__ import annotations

from typing import Any

import torch

from convscope.core.validate import check_values, reals
from convscope.methods.evaluation.sparsity import gini

__all__ = ["effective_complexity", "entropy_complexity", "sparseness"]


def _flat(maps: Any) -> torch.Tensor:
    from convscope.methods.evaluation._prep import check_finite

    return check_finite(maps).detach().double().abs().flatten(1)


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """(B,) Gini index of ``|maps|``: ``G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i))`` with
    ``a_(1) <= ... <= a_(n)``; 0 for a uniform map, ``(n - 1) / n`` for one pixel. Higher is
    sparser (better). Quantus adds 1e-7 to every normalised value first (a change below 1e-6).

    Shape:
        maps (B, H, W) -> (B,).
    """
    return gini(_flat(maps))


def entropy_complexity(maps: torch.Tensor) -> torch.Tensor:
    """(B,) ``-sum_i p_i ln p_i`` with ``p_i = |a_i| / sum_j |a_j|`` (``0 ln 0 = 0``; an all-zero map
    scores 0). Between 0 (one pixel) and ``ln n`` (uniform); lower is better.

    Shape:
        maps (B, H, W) -> (B,).
    """
    a = _flat(maps)
    p = a / a.sum(1, keepdim=True).clamp(min=1e-300)
    return (-torch.special.xlogy(p, p).sum(1)).float()


def effective_complexity(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B,) number of pixels with ``|a_i| / max_j |a_j| > eps`` (default 1e-5); lower is better.

    Shape:
        maps (B, H, W) -> (B,) long.
    """
    check_values(eps=(eps, reals(0, 1, lo_open=True)))
    a = _flat(maps)
    m = a.amax(1, keepdim=True)
    return (a > eps * m).sum(1) * (m[:, 0] > 0)
