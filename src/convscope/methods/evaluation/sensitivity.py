"""Max-sensitivity of an explanation (Yeh et al., "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019).

``SENS_max(x) = max_{||d||_inf <= r} ||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2``, estimated by
Monte Carlo: ``n_samples`` perturbations drawn uniformly from the L-infinity ball of radius ``r``
(in model space), the explained class held fixed. The normalisation by ``||Phi(x)||`` makes maps of
different scales comparable (as in Quantus); lower is more robust. All perturbed copies of the
batch are explained in one call (the method batches them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.methods.evaluation.explainers import explained_batch
from convscope.models import LoadedModel

__all__ = ["max_sensitivity"]


def max_sensitivity(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    *,
    targets: Any = None,
    radius: float = 0.1,
    n_samples: int = 8,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> torch.Tensor:
    """(B,) max-sensitivity of ``explainer`` at ``x``.

    Args:
        explainer: a method name or an explainer callable ``f(lm, x, targets) -> maps``.
        radius: L-infinity radius of the perturbations, in model-space units.
        n_samples: perturbations per image.
        maps: the maps at ``x`` if already computed (else computed here).

    Shape:
        x (B, C, H, W) -> (B,).
    """
    if radius <= 0 or n_samples < 1:
        raise InputError("max_sensitivity needs radius > 0 and n_samples >= 1")
    lm, ex, x, t, maps = explained_batch(model, x, explainer, targets, maps, batch_size=batch_size,
                                         seed=seed)
    b = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(n_samples, *x.shape, generator=g) * 2 - 1) * radius
    xp = (x.cpu()[None] + noise).reshape(n_samples * b, *x.shape[1:]).to(x.device, x.dtype)
    mp = ex(lm, xp, t.repeat(n_samples)).detach().double().cpu().view(n_samples, b, -1)
    m0 = maps.detach().double().cpu().reshape(1, b, -1)
    rel = (mp - m0).norm(dim=-1) / m0.norm(dim=-1).clamp(min=1e-12)
    return rel.amax(0).float()
