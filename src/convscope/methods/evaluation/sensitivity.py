"""Max-sensitivity of an explanation (Yeh et al., "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019).

``SENS_max(x) = max_{||d||_inf <= r} ||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2``, estimated by
Monte Carlo: ``n_samples`` perturbations drawn uniformly from the L-infinity ball of radius ``r``
(in model space), the explained class held fixed. The normalisation by ``||Phi(x)||`` makes maps of
different scales comparable (as in Quantus); lower is more robust. All perturbed copies of the
batch are explained in one call (the method batches them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.validate import option_group, shows_options
from convscope.methods.evaluation._options import Perturbations, check_ranges
from convscope.methods.evaluation.explainers import explained_batch
from convscope.models import LoadedModel

__all__ = ["explained_perturbations", "max_sensitivity", "perturbed_maps", "relative_changes", "seeded_draws",
           "seeded_noise"]


def perturbed_maps(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    noise: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor,
    *,
    targets: Any = None,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explanations of ``n`` perturbed copies of the batch, explained in one call.

    Args:
        noise: an (n, B, C, H, W) tensor added to ``x``, or ``noise(x) -> (n, B, C, H, W)``.

    Returns:
        (noise (n, B, C*H*W), maps at ``x`` (B, H*W), maps at ``x + noise`` (n, B, H*W)), float64
        on the CPU; the explained class is held at each image's target.
    """
    lm, ex, x, t, maps = explained_batch(model, x, explainer, targets, maps, batch_size=batch_size,
                                         seed=seed)
    d = noise(x.cpu()) if callable(noise) else torch.as_tensor(noise)
    if d.ndim != 5 or d.shape[1:] != x.shape:
        raise InputError(f"noise must be (n, B, C, H, W) with (B, C, H, W) = {tuple(x.shape)}, "
                         f"got {tuple(d.shape)}")
    n, b = d.shape[:2]
    xp = (x.cpu()[None] + d.to(x.dtype)).reshape(n * b, *x.shape[1:]).to(x.device)
    mp = ex(lm, xp, t.repeat(n)).detach().double().cpu().view(n, b, -1)
    return d.double().reshape(n, b, -1), maps.detach().double().cpu().reshape(b, -1), mp


def explained_perturbations(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    noise: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor,
    options: Perturbations,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`perturbed_maps` with the targets, maps, seed and batch size of ``options``."""
    return perturbed_maps(model, x, explainer, noise, targets=options.targets, maps=options.maps,
                          seed=options.seed, batch_size=options.batch_size)


def seeded_noise(n_samples: int, seed: int, distribution: str = "uniform", *, low: float = -1.0,
                 high: float = 1.0, std: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``noise(x)``: ``n_samples`` seeded draws shaped like ``x`` (float64, on the CPU), the same
    draws at every call: ``"uniform"`` in [``low``, ``high``) or ``"gaussian"`` with mean 0 and
    standard deviation ``std``. The one noise source of the robustness metrics."""
    if distribution not in ("uniform", "gaussian"):
        raise InputError(f"unknown distribution {distribution!r}; use 'uniform' or 'gaussian'")

    def draw(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if distribution == "gaussian":
            return torch.randn(n_samples, *x.shape, generator=g).double() * std
        return (torch.rand(n_samples, *x.shape, generator=g) * (high - low) + low).double()
    return draw


def seeded_draws(n_samples: int, seed: int, distribution: str = "gaussian", *, low: float = -1.0,
                 high: float = 1.0, std: float = 1.0) -> Callable[[torch.Tensor], Iterator[torch.Tensor]]:
    """``draws(x)``: :func:`seeded_noise`'s draws one at a time, each shaped like ``x`` and in its
    dtype (on the CPU), the same draws at every call: for many draws of a large batch, where
    :func:`seeded_noise` would hold all of them at once in float64."""
    if distribution not in ("uniform", "gaussian"):
        raise InputError(f"unknown distribution {distribution!r}; use 'uniform' or 'gaussian'")

    def draws(x: torch.Tensor) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        for _ in range(n_samples):
            if distribution == "gaussian":
                yield torch.randn(x.shape, generator=g, dtype=x.dtype) * std
            else:
                yield torch.rand(x.shape, generator=g, dtype=x.dtype) * (high - low) + low
    return draws


@shows_options(Perturbations)
def max_sensitivity(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    *,
    radius: float = 0.1,
    **options: Any,
) -> torch.Tensor:
    """(B,) max-sensitivity of ``explainer`` at ``x``.

    Args:
        explainer: a method name or an explainer callable ``f(lm, x, targets) -> maps``.
        radius: L-infinity radius of the perturbations, in model-space units.
        **options: the fields of :class:`~convscope.methods.evaluation._options.Perturbations`:
            ``targets``, ``n_samples`` (perturbations per image), ``maps`` (the maps at ``x`` if
            already computed), ``seed``, ``batch_size`` and ``noise`` ((n, B, C, H, W)
            perturbations to use instead of drawing them, e.g. Quantus's).

    Shape:
        x (B, C, H, W) -> (B,).
    """
    o = option_group(Perturbations, "max_sensitivity", options)
    return relative_changes(model, x, explainer, radius, o).amax(0).float()


def relative_changes(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    radius: float,
    options: Perturbations,
) -> torch.Tensor:
    """(n, B) ``||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2`` per perturbation ``d`` (uniform in the
    L-infinity ball of ``radius``, or the given ``noise``)."""
    check_ranges(radius=radius)
    o = options
    draw = seeded_noise(o.n_samples, o.seed, low=-radius, high=radius) if o.noise is None else o.noise
    _, m0, mp = explained_perturbations(model, x, explainer, draw, o)
    return (mp - m0[None]).norm(dim=-1) / m0.norm(dim=-1).clamp(min=1e-12)[None]
