"""Smooth and efficient MPRT (Hedström, Weber, Bareeva, Motzkus, Samek, Lapuschkin and Höhne,
"Sanity Checks Revisited: An Exploration to Repair the Model Parameter Randomisation Test",
XAI in Action workshop, NeurIPS 2023).

* :func:`smooth_mprt` (sMPRT): the model parameter randomisation test on *denoised* maps. Each map
  is the mean of the maps of ``n_samples`` inputs, ``n_samples - 1`` of them with Gaussian noise
  ``N(0, (m (max x - min x))^2)`` (``m = noise_magnitude``, per image) and the last the clean
  input, so the test measures what the weights change rather than gradient shattering. Per image,
  the Spearman rank correlation of ``|Phi_smooth|`` for the trained and the randomised model,
  averaged over the randomisation stages (bottom-up cascading by default, as Quantus 0.6.0).
  **Lower is better**.
* :func:`efficient_mprt` (eMPRT): the relative rise in the explanation's complexity when every
  layer is randomised, ``(H(Phi_random) - H(Phi)) / H(Phi)``, with ``H`` the discrete entropy of
  the histogram of the map's values in ``n_bins`` (100) equal bins. **Higher is better**: a map
  that explains the model turns to noise when the model does.

Quantus 0.6.0 departs from the paper in two places, and convscope follows the paper:

* its ``SmoothMPRT`` explains the noisy inputs with ``quantus.explain(model, ...,
  **explain_func_kwargs)``, not with the ``explain_func`` it was given, so a custom explainer is
  silently replaced by a Captum method (the test gives Quantus that same Captum method);
* with ``return_average_correlation=True`` it averages in the similarity of the un-randomised model
  (the entry ``"original"``; it skips a key ``"orig"`` that never exists), which pulls every score
  towards 1; sMPRT averages over the randomisation stages only (tested against Quantus's
  per-stage scores).

Given the same randomised models and draws, the per-stage correlations and the eMPRT score equal
Quantus's to 1e-5.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.core.validate import check_values, ints, reals
from convscope.methods.evaluation.explainers import as_explainer, explained_batch, explainer_name
from convscope.methods.evaluation.sanity import model_randomization, randomized_model
from convscope.methods.evaluation.sensitivity import seeded_draws
from convscope.models import LoadedModel

__all__ = ["discrete_entropy", "efficient_mprt", "smooth_mprt", "smoothed"]

Model = str | nn.Module | LoadedModel
Explainer = str | Callable[..., torch.Tensor]


def smoothed(
    explainer: Callable[..., torch.Tensor],
    n_samples: int = 50,
    noise_magnitude: float = 0.1,
    *,
    seed: int = 0,
    noise: torch.Tensor | None = None,
) -> Callable[..., torch.Tensor]:
    """The explainer ``f(lm, x, t)`` averaged over ``n_samples - 1`` noisy copies of ``x`` and
    ``x`` itself (sMPRT's denoised map), one noisy copy of the batch explained at a time.

    Args:
        noise: (n_samples - 1, B, C, H, W) draws to use instead of ``N(0, std^2)`` with ``std =
            noise_magnitude * (max x - min x)`` per image (seeded by ``seed``, the same draws at
            every call, so every stage of the test sees the same inputs).
    """
    check_values(n_samples=(n_samples, ints(1, 10_000)), noise_magnitude=(noise_magnitude, reals(0)))

    def f(lm: LoadedModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = None
        if noise is not None:
            d = torch.as_tensor(noise)
            if d.shape != (n_samples - 1, *x.shape):
                raise InputError(f"noise must be (n_samples - 1, B, C, H, W) = "
                                 f"{(n_samples - 1, *x.shape)}, got {tuple(d.shape)}")
        std = (noise_magnitude * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))).cpu()[:, None, None, None]
        # one noisy copy at a time, drawn in the input's dtype: memory of one batch, not n_samples
        draws = iter(d) if d is not None else (n * std for n in seeded_draws(n_samples - 1, seed)(x))
        total = explainer(lm, x, t).detach().double()
        for di in draws:
            total += explainer(lm, x + di.to(x.device, x.dtype), t).detach().double()
        return total / n_samples

    f.name = f"smoothed {explainer_name(explainer)}"  # type: ignore[attr-defined]
    return f


def smooth_mprt(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    mode: str = "bottom_up",
    n_samples: int = 50,
    noise_magnitude: float = 0.1,
    targets: Any = None,
    seed: int = 0,
    batch_size: int = 32,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) smooth MPRT: per image, the rank correlation of ``|Phi_smooth|`` of the trained and
    the randomised model, averaged over the stages (``mode``: ``"bottom_up"``, the default as in
    Quantus, ``"cascading"`` top-down, or ``"independent"``); lower is better. Defaults
    ``n_samples=50`` and ``noise_magnitude=0.1`` are the paper's ImageNet settings.

    Args:
        explainer: a method name or an explainer ``f(lm, x, targets) -> maps``.
        noise: (n_samples - 1, B, C, H, W) draws instead of seeded Gaussian ones.
    """
    ex = as_explainer(explainer, batch_size=batch_size, seed=seed) if isinstance(explainer, str) \
        else explainer
    sm = smoothed(ex, n_samples, noise_magnitude, seed=seed, noise=noise)
    r = model_randomization(model, x, sm, mode=mode, targets=targets, seed=seed, batch_size=batch_size,
                            progress=False, ssim=False)
    return r.spearman.mean(0).float()


def discrete_entropy(maps: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """(B,) Shannon entropy (nats) of the histogram of each map's values in ``n_bins`` equal bins
    between its minimum and maximum (``numpy.histogram``'s bins)."""
    check_values(n_bins=(n_bins, ints(1, 1_000_000)))
    out = []
    for m in maps.detach().double().cpu().flatten(1).numpy():  # B small histograms: numpy's bin edges
        h = np.histogram(m, bins=n_bins)[0]
        p = h[h > 0] / h.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return torch.tensor(out, dtype=torch.float64)


def efficient_mprt(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    targets: Any = None,
    maps: torch.Tensor | None = None,
    n_bins: int = 100,
    seed: int = 0,
    batch_size: int = 32,
    random_model: nn.Module | None = None,
) -> torch.Tensor:
    """(B,) efficient MPRT, ``(H(Phi_random) - H(Phi)) / H(Phi)`` with every layer of a copy of
    the model re-initialised (seeded by ``seed``); higher is better; NaN where the trained map is
    constant (``H = 0``).

    Args:
        maps: the trained model's maps if already computed.
        n_bins: histogram bins of the entropy (default 100, Quantus's).
        random_model: a randomised model to use instead of re-initialising a copy (e.g. Quantus's).
    """
    check_values(n_bins=(n_bins, ints(1, 1_000_000)))
    lm, ex, x, t, maps = explained_batch(model, x, explainer, targets, maps, batch_size=batch_size,
                                         seed=seed)
    twin = randomized_model(lm, seed) if random_model is None else replace(lm, model=random_model)
    with warnings.catch_warnings():  # maps of a random network are expected to be noise
        warnings.simplefilter("ignore", UnreliableResultWarning)
        rand = ex(twin, x, t)
    h0, h1 = discrete_entropy(maps, n_bins), discrete_entropy(rand, n_bins)
    return torch.where(h0 > 0, (h1 - h0) / h0.clamp(min=1e-300), torch.full_like(h0, float("nan"))).float()
