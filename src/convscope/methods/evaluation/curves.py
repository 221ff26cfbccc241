"""Deletion and insertion curves (Petsiuk et al.) and faithfulness correlation (Bhatt et al.).

Deletion (Petsiuk, Das and Saenko, "RISE", BMVC 2018): remove the pixels in the order the map
ranks them (most relevant first: ``order="most"``) by replacing them with a baseline, and record
the target-class score after each step. A faithful map makes the score fall fast: a *low* area
under the curve is good. Insertion starts from the baseline and puts the pixels back in that order;
a faithful map makes the score rise fast: a *high* area is good. With ``order="least"`` (least
relevant first) the good directions swap.

The curve has ``steps + 1`` points at fractions ``n_k / N`` of the ``N`` pixels, with
``n_k = round(k N / steps)``; the area is the trapezoid rule over those fractions, so it lies in
the score's range. Pixels with equal attribution are ordered at random (seeded), never by their
position in the image.

Faithfulness correlation (Bhatt, Weller and Moura, "Evaluating and Aggregating Feature-based
Model Explanations", IJCAI 2020): draw ``n_samples`` random pixel subsets ``S`` of
``subset_size`` pixels, set them to the baseline, and correlate (Pearson, per image) the sum of
the attribution over ``S`` with the drop of the target score ``f(x) - f(x_[S=baseline])``.

All masked images of all steps are evaluated in batches; masks are built as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.methods.evaluation._common import (
    BaselineSpec,
    as_loaded,
    masked_scores,
    mixed_scores,
    predict_targets,
)
from convscope.models import LoadedModel
from convscope.models.inputs import baseline as make_baseline

__all__ = [
    "Curve",
    "auc",
    "deletion",
    "faithfulness_correlation",
    "insertion",
    "pixel_ranks",
    "relevance_curve",
]


def auc(fractions: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under ``scores`` (..., S+1) over ``fractions`` (S+1,)."""
    dx = fractions[1:] - fractions[:-1]
    return ((scores[..., 1:] + scores[..., :-1]) * 0.5 * dx).sum(-1)


@dataclass(frozen=True)
class Curve:
    """Deletion or insertion curves of a batch.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        order: ``"most"`` (most relevant pixels first) or ``"least"``.
        fractions: (S+1,) share of pixels removed (deletion) or inserted (insertion).
        scores: (B, S+1) target score after each step.
        targets: (B,) the scored class.
    """

    kind: str
    order: str
    fractions: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor

    @property
    def auc(self) -> torch.Tensor:
        """(B,) area under each image's curve."""
        return auc(self.fractions, self.scores)

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger area means a more faithful map."""
        return (self.kind == "insertion") == (self.order == "most")

    def mean_curve(self) -> torch.Tensor:
        """(S+1,) the curve averaged over the batch."""
        return self.scores.mean(0)


def pixel_ranks(maps: torch.Tensor, order: str = "most", seed: int = 0) -> torch.Tensor:
    """(B, H*W) rank of every pixel: 0 for the first pixel to go, ties broken at random (seeded).

    Shape:
        maps (B, H, W).
    """
    if order not in ("most", "least"):
        raise InputError(f"unknown order {order!r}; use 'most' or 'least'")
    flat = maps.detach().float().flatten(1).cpu()
    b, n = flat.shape
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(b, n, generator=g).argsort(1)  # random tie order
    keys = flat.gather(1, perm)
    if order == "least":
        keys = -keys
    idx = perm.gather(1, torch.sort(keys, dim=1, descending=True, stable=True).indices)
    ranks = torch.empty_like(idx)
    ranks.scatter_(1, idx, torch.arange(n).expand(b, n).contiguous())
    return ranks.to(maps.device)


def _steps(n: int, steps: int) -> torch.Tensor:
    if steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps}")
    steps = min(steps, n)
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * n / steps).long()


def _check(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise InputError(f"inputs must be a (B, C, H, W) batch, got {tuple(x.shape)}")
    maps = torch.as_tensor(maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != (x.shape[0], *x.shape[-2:]):
        raise InputError(f"maps {tuple(maps.shape)} do not match inputs {tuple(x.shape)}; "
                         "expected (B, H, W)")
    return maps


def relevance_curve(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    kind: str = "deletion",
    order: str = "most",
    targets: Any = None,
    steps: int = 32,
    baseline: BaselineSpec | None = None,
    score: str = "probability",
    batch_size: int | str = "auto",
    seed: int = 0,
    progress: bool | None = None,
) -> Curve:
    """Deletion or insertion curve of ``maps`` for ``model`` on ``x`` (see module docstring).

    Args:
        model: a model spec, module, loaded model or black-box ``predict(batch) -> scores``.
        x: (B, C, H, W) inputs in model space.
        maps: (B, H, W) attribution maps; larger means more relevant.
        kind: ``"deletion"`` or ``"insertion"``.
        order: ``"most"`` or ``"least"`` relevant first.
        targets: class per image (default: the predicted class on ``x``).
        steps: number of steps (``steps + 1`` points).
        baseline: what removed pixels become (default: ``"black"`` pixels for deletion, ``"blur"``
            for insertion, as in Petsiuk et al.); see :func:`convscope.models.inputs.baseline`.
        score: ``"probability"`` (softmax, default) or ``"logit"`` of the target.
        batch_size: masked images per forward pass, or ``"auto"`` (a memory budget).
        seed: seed of the tie-breaking order.
        progress: show a progress bar (default: on a terminal, for long runs).

    Shape:
        Curve.scores (B, steps + 1).
    """
    if kind not in ("deletion", "insertion"):
        raise InputError(f"unknown curve {kind!r}; use 'deletion' or 'insertion'")
    lm = as_loaded(model)
    maps = _check(x, maps)
    x = x.detach()
    t, _ = predict_targets(lm.model, x, targets, 64 if batch_size == "auto" else int(batch_size))
    default = "black" if kind == "deletion" else "blur"
    base = make_baseline(x, baseline if baseline is not None else default, lm.preprocessing)
    h, w = x.shape[-2:]
    n = h * w
    ks = _steps(n, steps).to(x.device)
    ranks = pixel_ranks(maps.to(x.device), order, seed)  # (B, N)
    k = ks.numel()

    def mask_of(i: torch.Tensor) -> torch.Tensor:  # built per chunk: B * (S+1) * N can be huge
        changed = ranks[i // k] < ks[i % k][:, None]  # pixel already removed/inserted
        return (~changed if kind == "deletion" else changed).view(-1, h, w)

    scores = mixed_scores(lm.model, x, base, k, mask_of, t, score=score, batch_size=batch_size,
                          progress=progress, desc=kind)
    return Curve(kind, order, ks.double().div(n).float().cpu(), scores.cpu(), t.cpu())


def deletion(model: str | nn.Module | LoadedModel, x: torch.Tensor, maps: torch.Tensor,
             **kw: Any) -> Curve:
    """Deletion curve (lower area is better for ``order="most"``); see :func:`relevance_curve`."""
    return relevance_curve(model, x, maps, kind="deletion", **kw)


def insertion(model: str | nn.Module | LoadedModel, x: torch.Tensor, maps: torch.Tensor,
              **kw: Any) -> Curve:
    """Insertion curve (higher area is better for ``order="most"``); see :func:`relevance_curve`."""
    return relevance_curve(model, x, maps, kind="insertion", **kw)


def faithfulness_correlation(
    model: str | nn.Module | LoadedModel,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    n_samples: int = 100,
    subset_size: int | None = None,
    baseline: BaselineSpec = "black",
    score: str = "logit",
    batch_size: int | str = "auto",
    seed: int = 0,
    progress: bool | None = None,
) -> torch.Tensor:
    """(B,) Pearson correlation of attribution sums and score drops over random pixel subsets.

    Args:
        subset_size: pixels per subset (default: 1/10 of the image, rounded).
        n_samples: number of subsets per image.
        baseline: what the subset's pixels become (default ``"black"`` pixels, whatever the
            normalisation).
        score: ``"logit"`` (default, as Bhatt et al.) or ``"probability"``.

    Shape:
        x (B, C, H, W), maps (B, H, W) -> (B,), in [-1, 1]; NaN-free (0 where a side is constant).
    """
    lm = as_loaded(model)
    maps = _check(x, maps)
    x = x.detach()
    b = x.shape[0]
    h, w = x.shape[-2:]
    n = h * w
    s = subset_size if subset_size is not None else max(1, round(n / 10))
    if not 1 <= s <= n:
        raise InputError(f"subset_size must lie in 1..{n}, got {s}")
    if n_samples < 2:
        raise InputError(f"n_samples must be at least 2, got {n_samples}")
    t, _ = predict_targets(lm.model, x, targets, 64 if batch_size == "auto" else int(batch_size))
    base = make_baseline(x, baseline, lm.preprocessing)
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(b, n_samples, n, generator=g).argsort(-1)[..., :s]  # (B, n, s)
    removed = torch.zeros(b, n_samples, n, dtype=torch.bool)
    removed.scatter_(2, pick, True)
    removed = removed.to(x.device)
    full = masked_scores(lm.model, x, base, torch.ones(b, 1, h, w, dtype=torch.bool, device=x.device),
                         t, score=score, batch_size=batch_size, progress=False)
    part = masked_scores(lm.model, x, base, (~removed).view(b, n_samples, h, w), t, score=score,
                         batch_size=batch_size, progress=progress, desc="faithfulness")
    drop = (full - part).double().cpu()
    attr = (maps.detach().double().flatten(1).cpu()[:, None, :] * removed.cpu()).sum(-1)
    return _pearson(attr, drop).float()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp(min=1e-300), torch.zeros_like(den))
