"""Faithfulness metrics: does removing what the map calls relevant change the model's output?

Every metric here builds masked versions of the inputs and scores them through the batched
perturbation engine (:func:`convscope.methods.evaluation._common.mixed_scores`: masks built chunk by chunk,
``batch_size="auto"``). "Removing" a pixel sets all its channels to the baseline (default
``"black"``: pixel value 0 in the model's own space; ``"min"`` is each image's minimum, what
Quantus 0.6.0 calls ``"black"``). A *feature* is a pixel (all channels together), as in the
papers; Quantus ranks channel-pixels, which is the same for one-channel inputs.

* :func:`pixel_flipping` (Bach et al., PLoS ONE 2015), most relevant first; lower area is better.
* :func:`region_perturbation` (Samek et al., IEEE TNNLS 2017): MoRF (higher AOPC is better) or
  LeRF (lower is better).
* :func:`selectivity` (Montavon et al., DSP 2018); lower area is better.
* :func:`faithfulness_estimate` (Alvarez-Melis and Jaakkola, NeurIPS 2018); higher is better.
* :func:`monotonicity` (Arya et al. 2019); True (monotonic) is better.
* :func:`faithfulness_correlation` (Bhatt et al. 2020), re-exported from :mod:`.curves`.

Pixels with equal attribution are ordered at random (seeded), never by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.validate import check_values, ints, option_group, shows_options
from convscope.methods.evaluation._common import BaselineSpec, mixed_scores
from convscope.methods.evaluation._options import LOGIT, Removals
from convscope.methods.evaluation._prep import Prepared, image_minimum, metric_baseline, prepare
from convscope.methods.evaluation.curves import (
    Curve,
    _pearson,
    faithfulness_correlation,
    pixel_ranks,
    relevance_curve,
)
from convscope.models import LoadedModel

__all__ = [
    "PatchCurve",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "group_removals",
    "monotonicity",
    "patch_ranks",
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
]

Model = str | nn.Module | LoadedModel


def _step(n: int, features_in_step: int) -> int:
    check_values(features_in_step=(features_in_step, ints(1, n)))
    if n % int(features_in_step):
        raise InputError(f"features_in_step={features_in_step} does not divide the {n} pixels of an "
                         "image; pick a divisor")
    return int(features_in_step)


def _ranked(model: Model, x: torch.Tensor, maps: torch.Tensor, features_in_step: int, o: Removals,
            order: str) -> tuple[Prepared, torch.Tensor, torch.Tensor, int]:
    """The start of a pixel-group metric: prepared inputs, baseline, (B, N) pixel ranks, step."""
    p = prepare(model, x, maps, o.targets, o.batch_size)
    s = _step(p.x.shape[-2] * p.x.shape[-1], features_in_step)
    return p, metric_baseline(p.x, o.baseline, p.lm), pixel_ranks(p.maps, order, o.seed), s


@shows_options(Removals)
def pixel_flipping(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    features_in_step: int = 1,
    **options: Any,
) -> Curve:
    """Pixel flipping (Bach et al., "On Pixel-Wise Explanations ... by Layer-Wise Relevance
    Propagation", PLoS ONE 2015).

    Flip ``features_in_step`` pixels at a time to the baseline, most relevant first, cumulatively:
    ``y_k = f_c(x with the k * s top pixels flipped)``, k = 0 .. N/s. A faithful map makes the
    score fall at once: **lower area is better**. The curve's points k >= 1 are Quantus 0.6.0's
    ``PixelFlipping`` curve; the area here is the trapezoid over the *fraction* of pixels flipped
    and includes the unflipped start k = 0 (Quantus integrates from k = 1 with unit spacing, which
    grows with the image size).

    Args:
        features_in_step: pixels flipped per step (must divide H * W; default 1).
        **options: the fields of :class:`~convscope.methods.evaluation._options.Removals`:
            ``targets``, ``baseline`` (what flipped pixels become: default ``"black"``; ``"min"``
            is Quantus's), ``score`` (``"probability"``, the default, as Quantus, or ``"logit"``),
            ``batch_size``, ``seed`` (orders pixels of equal attribution) and ``progress``.

    Returns:
        A :class:`~convscope.methods.evaluation.curves.Curve` (kind ``"deletion"``, order ``"most"``)
        with ``N / s + 1`` points.
    """
    o = option_group(Removals, "pixel_flipping", options)
    n = x.shape[-2] * x.shape[-1]
    s = _step(n, features_in_step)
    baseline = o.baseline
    if isinstance(baseline, str) and baseline == "min":
        baseline = image_minimum(x.detach())
    return relevance_curve(model, x, maps, kind="deletion", order="most", targets=o.targets, steps=n // s,
                           baseline=baseline, score=o.score, batch_size=o.batch_size, seed=o.seed,
                           progress=o.progress)


def patch_ranks(maps: torch.Tensor, patch_size: int, order: str = "morf") -> tuple[torch.Tensor, int]:
    """Rank of each pixel's patch (0: removed first) and the number of patches.

    Patches tile the image padded to a multiple of ``patch_size`` (padding split floor/ceil
    around it, as Quantus does); a patch's relevance is the sum of the map over its pixels.
    Equal sums keep the patches' row-major order (stable sort).

    Shape:
        maps (B, H, W) -> (B, H, W) long ranks.
    """
    if order not in ("morf", "lerf"):
        raise InputError(f"unknown order {order!r}; use 'morf' or 'lerf'")
    h, w = maps.shape[-2:]
    check_values(patch_size=(patch_size, ints(1, min(h, w))))
    p = int(patch_size)
    ph, pw = (-h) % p // 2, (-w) % p // 2
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    rows = (torch.arange(h, device=maps.device) + ph) // p
    cols = (torch.arange(w, device=maps.device) + pw) // p
    pid = rows[:, None] * gw + cols[None, :]  # (H, W) patch id
    b = maps.shape[0]
    sums = torch.zeros(b, gh * gw, dtype=torch.float64, device=maps.device)
    sums.index_add_(1, pid.flatten(), maps.double().flatten(1))
    key = -sums if order == "morf" else sums
    perm = torch.sort(key, dim=1, stable=True).indices
    rank = torch.empty_like(perm)
    rank.scatter_(1, perm, torch.arange(gh * gw, device=maps.device).expand(b, -1).contiguous())
    return rank.gather(1, pid.flatten().expand(b, -1)).view(b, h, w), gh * gw


@dataclass(frozen=True)
class PatchCurve:
    """Scores after removing patches one more at a time (region perturbation, selectivity).

    Attributes:
        name: ``"region_perturbation"`` or ``"selectivity"``.
        order: ``"morf"`` or ``"lerf"``.
        initial: (B,) score of the intact input.
        scores: (B, L) score after removing the first ``k`` patches, k = 1 .. L.
        targets: (B,) the scored class.
        options: the choices made (patch size, baseline, score).
    """

    name: str
    order: str
    initial: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor
    options: dict[str, Any]

    @property
    def deltas(self) -> torch.Tensor:
        """(B, L) ``f(x) - f(x_k)``: Quantus's ``RegionPerturbation`` curve."""
        return self.initial[:, None] - self.scores

    @property
    def aopc(self) -> torch.Tensor:
        """(B,) area over the perturbation curve, Samek et al. eq. 12:
        ``1/(L+1) sum_{k=0}^{L} (f(x) - f(x_k))`` (the k = 0 term is 0)."""
        return self.deltas.sum(1) / (self.scores.shape[1] + 1)

    @property
    def auc(self) -> torch.Tensor:
        """(B,) trapezoid area under ``f(x_k)``, k = 0 .. L, over the fraction of patches removed."""
        y = torch.cat([self.initial[:, None], self.scores], 1)
        return ((y[:, 1:] + y[:, :-1]) * 0.5).sum(1) / self.scores.shape[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the curves and the options."""
        return {"name": self.name, "order": self.order, "initial": self.initial.tolist(),
                "scores": self.scores.tolist(), "targets": self.targets.tolist(), "options": self.options}


def _patch_curve(name: str, model: Model, x: torch.Tensor, maps: torch.Tensor, *, targets: Any,
                 patch_size: int, order: str, regions: int | None, baseline: BaselineSpec, score: str,
                 batch_size: int | str, progress: bool | None) -> PatchCurve:
    p = prepare(model, x, maps, targets, batch_size)
    base = metric_baseline(p.x, baseline, p.lm)
    ranks, n_patches = patch_ranks(p.maps, patch_size, order)
    if regions is not None:
        check_values(regions=(regions, ints(1)))
    k = n_patches if regions is None else min(int(regions), n_patches)
    flat = ranks.flatten(1)
    h, w = p.x.shape[-2:]

    def mask_of(i: torch.Tensor) -> torch.Tensor:
        return (flat[i // (k + 1)] >= (i % (k + 1))[:, None]).view(-1, h, w)  # keep patches not yet removed

    out = mixed_scores(p.net, p.x, base, k + 1, mask_of, p.targets, score=score, batch_size=batch_size,
                       progress=progress, desc=name.replace("_", " ")).double().cpu()
    shown = baseline if isinstance(baseline, (str, float, int)) else "tensor"
    opts = {"patch_size": int(patch_size), "regions": k, "baseline": shown, "score": score}
    return PatchCurve(name, order, out[:, 0], out[:, 1:], p.targets.cpu(), opts)


def region_perturbation(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    patch_size: int = 8,
    order: str = "morf",
    regions: int | None = 100,
    baseline: BaselineSpec = "black",
    score: str = "probability",
    batch_size: int | str = "auto",
    progress: bool | None = None,
) -> PatchCurve:
    """Region perturbation (Samek et al., "Evaluating the Visualization of What a Deep Neural
    Network Has Learned", IEEE TNNLS 2017).

    Remove ``patch_size`` x ``patch_size`` patches cumulatively in the order of their summed
    relevance; ``AOPC = 1/(L+1) sum_{k=0}^{L} (f(x) - f(x_k))``. MoRF (most relevant first):
    **higher AOPC is better**; LeRF (least relevant first): lower is better. Samek et al. fill a
    removed patch with uniform noise; the default here is ``"black"`` (pass ``"uniform"``).
    ``result.deltas`` equals Quantus 0.6.0's ``RegionPerturbation`` curve.

    Args:
        patch_size: patch side in pixels (default 8).
        order: ``"morf"`` or ``"lerf"``.
        regions: patches removed at most (default 100; ``None``: all).
        baseline, score: see :func:`pixel_flipping`.
    """
    return _patch_curve("region_perturbation", model, x, maps, targets=targets, patch_size=patch_size,
                        order=order, regions=regions, baseline=baseline, score=score,
                        batch_size=batch_size, progress=progress)


def selectivity(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    patch_size: int = 8,
    baseline: BaselineSpec = "black",
    score: str = "probability",
    batch_size: int | str = "auto",
    progress: bool | None = None,
) -> PatchCurve:
    """Selectivity (Montavon, Samek and Mueller, "Methods for Interpreting and Understanding Deep
    Neural Networks", DSP 2018).

    Remove every patch, most relevant first, and record ``f(x_k)``; a faithful map makes the score
    drop fast: **lower ``auc`` is better**. ``result.scores`` equals Quantus 0.6.0's
    ``Selectivity`` curve.
    """
    return _patch_curve("selectivity", model, x, maps, targets=targets, patch_size=patch_size,
                        order="morf", regions=None, baseline=baseline, score=score,
                        batch_size=batch_size, progress=progress)


def group_removals(model: Model, x: torch.Tensor, maps: torch.Tensor, features_in_step: int, o: Removals, *,
                   order: str, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with each group of ``features_in_step`` pixels (groups in ``order`` of relevance)
    removed on its own, and the groups' attribution sums.

    Returns:
        (B, G + 1) scores (column 0: the intact input), (B, G) sums; float64 on the CPU.
    """
    p, base, ranks, s = _ranked(model, x, maps, features_in_step, o, order)
    h, w = p.x.shape[-2:]
    g = h * w // s
    group = ranks // s  # (B, N) group of each pixel

    def mask_of(i: torch.Tensor) -> torch.Tensor:
        return (group[i // (g + 1)] != (i % (g + 1))[:, None] - 1).view(-1, h, w)  # column 0: intact

    out = mixed_scores(p.net, p.x, base, g + 1, mask_of, p.targets, score=o.score, batch_size=o.batch_size,
                       progress=o.progress, desc=desc).double().cpu()
    sums = torch.zeros(p.x.shape[0], g, dtype=torch.float64)
    sums.scatter_add_(1, group.cpu(), p.maps.double().flatten(1).cpu())
    return out, sums


@shows_options(Removals, **LOGIT)
def faithfulness_estimate(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    features_in_step: int = 1,
    **options: Any,
) -> torch.Tensor:
    """(B,) faithfulness estimate (Alvarez-Melis and Jaakkola, "Towards Robust Interpretability
    with Self-Explaining Neural Networks", NeurIPS 2018).

    Remove each group ``G_i`` of ``features_in_step`` pixels on its own (groups in order of
    relevance) and correlate (Pearson) ``sum_{j in G_i} a_j`` with ``f(x) - f(x_{G_i = baseline})``
    over the groups. In [-1, 1]; **higher is better**. Equals Quantus 0.6.0's
    ``FaithfulnessEstimate`` (logit score by default, as there). Options as :func:`pixel_flipping`.
    """
    o = option_group(Removals, "faithfulness_estimate", options, **LOGIT)
    out, sums = group_removals(model, x, maps, features_in_step, o, order="most",
                               desc="faithfulness estimate")
    drop = out[:, :1] - out[:, 1:]
    return _pearson(sums, drop).float()


@shows_options(Removals)
def monotonicity(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    features_in_step: int = 1,
    **options: Any,
) -> torch.Tensor:
    """(B,) bool: monotonicity (Arya et al., "One Explanation Does Not Fit All", arXiv 2019).

    Start from the baseline and put the input's pixels back ``features_in_step`` at a time, least
    relevant first; the map is monotonic when the target score never decreases:
    ``f(x_1) <= f(x_2) <= ... <= f(x_{N/s})``. **True is better**.

    Quantus 0.6.0's ``Monotonicity`` replaces baseline pixels *with the baseline* (it never puts
    the input back), so its curve is flat and every map passes; this follows the paper, and is
    tested against a hand computation. Options as :func:`pixel_flipping`.
    """
    o = option_group(Removals, "monotonicity", options)
    p, base, ranks, s = _ranked(model, x, maps, features_in_step, o, "least")
    h, w = p.x.shape[-2:]
    k = h * w // s

    def mask_of(i: torch.Tensor) -> torch.Tensor:
        return (ranks[i // k] < ((i % k)[:, None] + 1) * s).view(-1, h, w)  # pixels put back

    out = mixed_scores(p.net, p.x, base, k, mask_of, p.targets, score=o.score, batch_size=o.batch_size,
                       progress=o.progress, desc="monotonicity")
    return (out[:, 1:] >= out[:, :-1]).all(1).cpu()

