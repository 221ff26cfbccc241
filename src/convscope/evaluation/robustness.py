"""Robustness metrics: does the explanation stay put when the input barely moves?

Each perturbs the batch ``n_samples`` times, explains every perturbed copy in one call (the method
batches them) with the explained class held fixed, and compares the maps. Perturbations are in
model space; pass ``noise=`` (an (n, B, C, H, W) tensor) to use given draws, e.g. Quantus's.
**Lower is better** for all of them.

* :func:`max_sensitivity` and :func:`avg_sensitivity` (Yeh et al., "On the (In)fidelity and
  Sensitivity of Explanations", NeurIPS 2019): ``||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2`` with
  ``d`` uniform in the L-infinity ball of ``radius``; the maximum, or the mean, over the draws.
* :func:`local_lipschitz_estimate` (Alvarez-Melis and Jaakkola, "On the Robustness of
  Interpretability Methods", ICML-W 2018): ``max_d ||Phi(x + d) - Phi(x)||_2 / ||d||_2`` with
  Gaussian ``d`` of standard deviation ``std``.

Quantus 0.6.0 draws its noise from NumPy's global generator and (for the Lipschitz estimate)
divides every map of the batch by the batch's largest value by default; given the same draws and
``normalise=False`` it agrees with these to float precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._validate import check_values, ints, reals
from ..models import LoadedModel
from .sensitivity import max_sensitivity, perturbed_maps, relative_changes

__all__ = ["avg_sensitivity", "gaussian_noise", "local_lipschitz_estimate", "max_sensitivity"]

Model = str | nn.Module | LoadedModel
Explainer = str | Callable[..., torch.Tensor]


def avg_sensitivity(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    targets: Any = None,
    radius: float = 0.1,
    n_samples: int = 8,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) average sensitivity: the mean over ``n_samples`` uniform draws (radius ``radius``,
    default 0.1 model-space units) of ``||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2``; lower is better.
    Options as :func:`max_sensitivity`."""
    return relative_changes(model, x, explainer, targets=targets, radius=radius, n_samples=n_samples,
                            maps=maps, seed=seed, batch_size=batch_size, noise=noise).mean(0).float()


def gaussian_noise(n_samples: int, std: float, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``noise(x)``: ``n_samples`` Gaussian draws of standard deviation ``std`` (seeded)."""
    def draw(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n_samples, *x.shape, generator=g).double() * std
    return draw


def local_lipschitz_estimate(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    targets: Any = None,
    std: float = 0.1,
    n_samples: int = 8,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) ``max_d ||Phi(x + d) - Phi(x)||_2 / (||d||_2 + 1e-10)`` over ``n_samples`` Gaussian
    draws of standard deviation ``std`` (default 0.1, Quantus's); lower is better.

    Args:
        explainer: a method name or an explainer ``f(lm, x, targets) -> maps``.
        maps: the maps at ``x`` if already computed.
        noise: (n, B, C, H, W) perturbations to use instead of drawing them.
    """
    check_values(std=(std, reals(0, lo_open=True)), n_samples=(n_samples, ints(1)))
    draw = gaussian_noise(n_samples, std, seed) if noise is None else noise
    d, m0, mp = perturbed_maps(model, x, explainer, draw, targets=targets, maps=maps, seed=seed,
                               batch_size=batch_size)
    return ((mp - m0[None]).norm(dim=-1) / (d.norm(dim=-1) + 1e-10)).amax(0).float()


