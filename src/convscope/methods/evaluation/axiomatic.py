"""Axiomatic metrics: does the map obey a property an attribution should have?

* :func:`completeness` (Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks",
  ICML 2017): the attributions sum to the output difference, ``sum_i a_i = f(x) - f(x')`` with
  ``x'`` the baseline. Returned as the relative residual
  ``|sum_i a_i - (f(x) - f(x'))| / max(|f(x) - f(x')|, 1e-12)``: **lower is better**, 0 for a
  complete method. Quantus 0.6.0 returns ``sum a == f(x) - f(x')`` as an exact float equality,
  false for every method that sums in another order; the residual is what the axiom measures.
* :func:`non_sensitivity` (Nguyen and Martinez, "On Quantitative Aspects of Model
  Interpretability", 2020): the number of pixels where the map and the model disagree about
  whether the pixel matters: ``|a_i| < eps`` while removing it moves the score by ``eps`` or
  more, or the reverse. **Lower is better**. Quantus 0.6.0 tests ``a_i < eps`` (so every
  negative attribution counts as "no attribution"); this tests ``|a_i|`` as the paper does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convscope.core.validate import check_values, reals
from convscope.methods.evaluation._common import BaselineSpec, mixed_scores
from convscope.methods.evaluation._prep import metric_baseline, prepare
from convscope.methods.evaluation.faithfulness import _step
from convscope.models import LoadedModel

__all__ = ["completeness", "non_sensitivity"]

Model = str | nn.Module | LoadedModel


def completeness(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    baseline: BaselineSpec = "black",
    score: str = "logit",
    batch_size: int | str = "auto",
) -> torch.Tensor:
    """(B,) relative completeness residual of ``maps`` against ``f(x) - f(baseline)`` (the
    target's logit by default; integrated gradients uses the same baseline)."""
    p = prepare(model, x, maps, targets, batch_size)
    base = metric_baseline(p.x, baseline, p.lm)
    h, w = p.x.shape[-2:]

    def mask_of(i: torch.Tensor) -> torch.Tensor:  # column 0: the input, column 1: the baseline
        return (i % 2 == 0)[:, None, None].expand(-1, h, w)

    out = mixed_scores(p.net, p.x, base, 2, mask_of, p.targets, score=score, batch_size=batch_size,
                       progress=False).double().cpu()
    diff = out[:, 0] - out[:, 1]
    total = p.maps.double().flatten(1).sum(1).cpu()
    return ((total - diff).abs() / diff.abs().clamp(min=1e-12)).float()


def non_sensitivity(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    eps: float = 1e-5,
    features_in_step: int = 1,
    baseline: BaselineSpec = "black",
    score: str = "probability",
    batch_size: int | str = "auto",
    progress: bool | None = None,
) -> torch.Tensor:
    """(B,) number of pixel groups where "no attribution" (every ``|a_i| < eps`` in the group)
    disagrees with "no effect" (``|f(x) - f(x_{G = baseline})| < eps``), each group removed on its
    own. Groups are ``features_in_step`` consecutive pixels in row-major order (default 1: single
    pixels, as Quantus, whose version only runs with 1); ``eps`` default 1e-5, as Quantus."""
    check_values(eps=(eps, reals(0, lo_open=True)))
    p = prepare(model, x, maps, targets, batch_size)
    base = metric_baseline(p.x, baseline, p.lm)
    h, w = p.x.shape[-2:]
    s = _step(h * w, features_in_step)
    g = h * w // s
    group = torch.arange(h * w, device=p.x.device) // s

    def mask_of(i: torch.Tensor) -> torch.Tensor:  # column 0: intact, column j: group j - 1 removed
        return (group[None] != (i % (g + 1))[:, None] - 1).view(-1, h, w)

    out = mixed_scores(p.net, p.x, base, g + 1, mask_of, p.targets, score=score, batch_size=batch_size,
                       progress=progress, desc="non-sensitivity").double().cpu()
    still = (out[:, 1:] - out[:, :1]).abs() < eps
    empty = (p.maps.abs().flatten(1).cpu() < eps).view(p.maps.shape[0], g, s).all(-1)
    return (still ^ empty).sum(1)
