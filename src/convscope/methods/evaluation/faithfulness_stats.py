"""Faithfulness metrics that correlate (or regress) attribution sums with output changes over many
pixel sets: monotonicity correlation, sensitivity-N and infidelity; and sufficiency (do images
with similar explanations get the same prediction?).

* :func:`monotonicity_correlation` (Nguyen and Martinez, "On Quantitative Aspects of Model
  Interpretability", 2020): remove each group of ``features_in_step`` pixels on its own (groups in
  order of relevance) and take the Spearman correlation of the group's attribution sum with the
  output's squared change ``(f(x_G) - f(x))^2 / f(x)^2`` (``1 / f(x)^2`` only where
  ``|f(x)| >= eps``). **Higher is better**. Equals Quantus 0.6.0's ``MonotonicityCorrelation``
  for a fixed baseline (its default averages 100 random grey fills per group; pass such draws as
  ``baseline=``).
* :func:`sensitivity_n` (Ancona et al., "Towards better understanding of gradient-based
  attribution methods", ICLR 2018): for each subset size ``n``, the Pearson correlation of
  ``sum_{i in S} a_i`` with ``f(x) - f(x_[S = baseline])`` over random subsets ``S`` of ``n`` pixels:
  :func:`~convscope.methods.evaluation.curves.faithfulness_correlation` at each size. **Higher is better**.
  Quantus 0.6.0's ``SensitivityN`` removes the top pixels *cumulatively* and correlates *across the
  images of the batch*; this follows the paper (tested against a linear model, where a complete
  attribution scores 1 at every size).
* :func:`infidelity` (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS
  2019): ``E_I[(I . Phi - (f(x) - f(x - I)))^2]`` with ``I = (x - baseline) * 1_P`` for random
  square patches ``P`` of ``patch_size`` (Yeh et al.'s "square removal"); ``I . Phi`` sums over
  channels with the map broadcast. **Lower is better**; 0 for the gradient of a linear model
  (``Phi`` is read as a sensitivity, as Yeh et al. and Quantus do: ``I . Phi`` multiplies it by the
  input change).
  Quantus 0.6.0 accumulates its patches over an image's whole grid and averages per patch, another
  quantity; tested by hand here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.validate import check_values, ints, option_group, reals, shows_options
from convscope.methods.evaluation._common import mixed_scores
from convscope.methods.evaluation._options import LOGIT, Removals, check_ranges
from convscope.methods.evaluation._prep import metric_baseline, prepare
from convscope.methods.evaluation.curves import faithfulness_correlation
from convscope.models import LoadedModel

__all__ = ["infidelity", "monotonicity_correlation", "sensitivity_n", "sufficiency"]

Model = str | nn.Module | LoadedModel


@shows_options(Removals)
def monotonicity_correlation(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    features_in_step: int = 1,
    eps: float = 1e-5,
    **options: Any,
) -> torch.Tensor:
    """(B,) Spearman correlation of group attribution sums with the normalised squared output
    change of removing each group (see the module docstring); higher is better. Options (the
    fields of :class:`~convscope.methods.evaluation._options.Removals`) as
    :func:`~convscope.methods.evaluation.faithfulness.pixel_flipping`."""
    from scipy.stats import spearmanr

    from convscope.methods.evaluation.faithfulness import group_removals

    o = option_group(Removals, "monotonicity_correlation", options)
    check_values(eps=(eps, reals(0)))
    out, sums = group_removals(model, x, maps, features_in_step, o, order="least",
                               desc="monotonicity correlation")
    y0 = out[:, :1]
    inv = torch.where(y0.abs() >= eps, 1 / y0.clamp(min=1e-300).square(), torch.ones_like(y0))
    var = (out[:, 1:] - y0).square() * inv
    rho = [spearmanr(a, v).statistic for a, v in zip(sums.numpy(), var.numpy(), strict=True)]
    return torch.tensor(np.nan_to_num(np.asarray(rho, dtype=np.float64)), dtype=torch.float32)


@shows_options(Removals, **LOGIT)
def sensitivity_n(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    sizes: Sequence[int] | None = None,
    n_samples: int = 100,
    **options: Any,
) -> torch.Tensor:
    """(B, len(sizes)) sensitivity-N: the Pearson correlation per subset size (default: 1 %, 5 %,
    10 %, 25 % and 50 % of the pixels, rounded, at least 1); higher is better. Options as
    :func:`monotonicity_correlation` (``score`` default ``"logit"``)."""
    o = option_group(Removals, "sensitivity_n", options, **LOGIT)
    n = x.shape[-2] * x.shape[-1]
    if sizes is None:
        sizes = [max(1, round(f * n)) for f in (0.01, 0.05, 0.1, 0.25, 0.5)]
    sizes = list(sizes)
    for k in sizes:
        check_values(sizes=(k, ints(1, n)))
    cols = [faithfulness_correlation(model, x, maps, targets=o.targets, n_samples=n_samples, subset_size=k,
                                     baseline=o.baseline, score=o.score, batch_size=o.batch_size,
                                     seed=o.seed + j, progress=o.progress)
            for j, k in enumerate(sizes)]
    return torch.stack(cols, 1)


@shows_options(Removals, **LOGIT)
def infidelity(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    patch_size: int = 4,
    n_samples: int = 32,
    **options: Any,
) -> torch.Tensor:
    """(B,) infidelity under random square-patch removals (see the module docstring); lower is
    better.

    Args:
        patch_size: side of the removed square (default 4 px).
        n_samples: patches per image (positions uniform, seeded).
        **options: as :func:`monotonicity_correlation` (``score`` default ``"logit"``).
    """
    o = option_group(Removals, "infidelity", options, **LOGIT)
    p = prepare(model, x, maps, o.targets, o.batch_size)
    h, w = p.x.shape[-2:]
    check_values(patch_size=(patch_size, ints(1, min(h, w))))
    check_ranges(n_samples=n_samples)
    base = metric_baseline(p.x, o.baseline, p.lm)
    b = p.x.shape[0]
    gen = torch.Generator().manual_seed(o.seed)
    top = torch.randint(0, h - patch_size + 1, (b, n_samples), generator=gen)
    left = torch.randint(0, w - patch_size + 1, (b, n_samples), generator=gen)
    r = torch.arange(h)[None, None, :, None] - top[..., None, None]
    c = torch.arange(w)[None, None, None, :] - left[..., None, None]
    inside = (r >= 0) & (r < patch_size) & (c >= 0) & (c < patch_size)  # (B, n, H, W)
    keep = torch.cat([torch.ones(b, 1, h, w, dtype=torch.bool), ~inside], 1).to(p.x.device)
    flat = keep.view(-1, h, w)
    out = mixed_scores(p.net, p.x, base, n_samples + 1, lambda i: flat[i], p.targets, score=o.score,
                       batch_size=o.batch_size, progress=o.progress, desc="infidelity").double().cpu()
    drop = out[:, :1] - out[:, 1:]
    diff = (p.x - base).double().sum(1).cpu()  # (B, H, W): I summed over channels, the map broadcast
    dot = (inside.double() * (diff * p.maps.double().cpu())[:, None]).flatten(2).sum(-1)
    return (dot - drop).square().mean(1).float()


def sufficiency(maps: torch.Tensor, predictions: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """(B,) sufficiency (Dasgupta, Frost and Moshkovitz, "Framework for Evaluating Faithfulness of
    Local Explanations", ICML 2022): among the other images whose explanation lies within
    ``threshold`` (default 0.6) of this one, the share predicted as the same class; **higher is
    better**. Distances are standardised Euclidean (each pixel scaled by its variance over the
    batch) divided by the batch's largest distance, as Quantus 0.6.0 computes them (so the
    neighbourhood is relative to the batch). Quantus scores an image without neighbours 0; here it
    is NaN (no evidence either way), and equal to Quantus elsewhere.

    Shape:
        maps (B, H, W), predictions (B,) -> (B,).
    """
    from scipy.spatial.distance import cdist

    from convscope.methods.evaluation._prep import check_finite

    check_values(threshold=(threshold, reals(0, 1)))
    a = check_finite(maps).detach().double().flatten(1).cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.nan_to_num(cdist(a, a, "seuclidean"))
    if dist.max() > 0:
        dist = dist / dist.max()
    near = dist <= threshold
    np.fill_diagonal(near, False)
    p = torch.as_tensor(predictions).reshape(-1).cpu().numpy()
    agree = (near & (p[:, None] == p[None])).sum(1)
    count = near.sum(1)
    out = np.where(count > 0, agree / np.maximum(count, 1), np.nan)
    return torch.as_tensor(out, dtype=torch.float32)
