"""Shared pieces of the evaluation metrics: model resolution, targets, baselines, scoring.

``masked_scores`` evaluates a model on many masked versions of each input through the shared
batched perturbation engine (:func:`convscope.engines.perturb.evaluate`): masked images are built chunk by
chunk from tensor masks, never all at once, in batches sized to a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import state_guard
from convscope.core.targets import resolve_target
from convscope.models import as_loaded
from convscope.models.forward import chunked_outputs

__all__ = [
    "BaselineSpec",
    "as_loaded",
    "masked_scores",
    "mixed_scores",
    "predict_targets",
    "score_fn",
]

#: A baseline: a number in model space, ``"blur"`` (Gaussian blur of the input), ``"black"``
#: (pixel value 0, needs the model's preprocessing) or a (C, H, W) / (B, C, H, W) tensor.
BaselineSpec = float | str | torch.Tensor


def score_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(logits (n, K), targets (n,)) -> (n,)``: ``"probability"`` (softmax) or ``"logit"``."""
    if kind == "probability":
        return lambda out, t: torch.softmax(out.float(), 1).gather(1, t[:, None])[:, 0]
    if kind == "logit":
        return lambda out, t: out.float().gather(1, t[:, None])[:, 0]
    raise InputError(f"unknown score {kind!r}; use 'probability' or 'logit'")


def predict_targets(
    net: nn.Module, x: torch.Tensor, targets: Any, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (B,) long, logits (B, K)) where ``targets=None`` means the predicted class.

    Targets are read by :func:`convscope.core.targets.resolve_target` (a class index or name for every
    image, one per image, ``"top2"``, ...); a one-element list or tensor is one target for all.
    """
    with state_guard(net):
        logits = chunked_outputs(net, x, batch_size)
    spec = targets
    if isinstance(spec, (torch.Tensor, np.ndarray, np.generic)):
        spec = torch.as_tensor(spec).reshape(-1).tolist()
    if isinstance(spec, (list, tuple)) and len(spec) == 1:
        spec = spec[0]  # one target for every image
    resolved = resolve_target(spec, logits)  # the one rule: indices, names, "top2", ...
    if resolved.indices is None or resolved.negative is not None:
        raise InputError("the metrics take class targets (indices), not a callable or a contrast")
    t = resolved.indices.to(logits.device)
    return t.clone(), logits


def masked_scores(
    net: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    masks: torch.Tensor,
    targets: torch.Tensor,
    *,
    score: str = "probability",
    batch_size: int | str = "auto",
    progress: bool | None = None,
    desc: str = "evaluate",
) -> torch.Tensor:
    """Score ``net`` on ``baseline + mask * (x - baseline)`` for every mask of every image.

    Args:
        net: the model (put in eval mode with frozen weights for the call, then restored).
        x: (B, C, H, W) inputs; baseline: (B, C, H, W).
        masks: (B, K, H, W), 1 (or True) keeps the input pixel, 0 puts the baseline there.
        targets: (B,) class per image.
        score: ``"probability"`` or ``"logit"`` of the target class.
        batch_size: masked images per forward pass, or ``"auto"`` (sized to a memory budget).
        progress: progress bar (default: the engine's, on a terminal for long runs).

    Returns:
        (B, K) scores.
    """
    b, k = masks.shape[:2]
    if masks.shape[0] != x.shape[0] or masks.shape[2:] != x.shape[-2:]:
        raise InputError(f"masks {tuple(masks.shape)} do not match inputs {tuple(x.shape)}")
    flat = masks.reshape(b * k, *masks.shape[2:])
    return mixed_scores(net, x, baseline, k, lambda i: flat[i], targets, score=score,
                        batch_size=batch_size, progress=progress, desc=desc)


def mixed_scores(
    net: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    k: int,
    mask_of: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    *,
    score: str = "probability",
    batch_size: int | str = "auto",
    progress: bool | None = None,
    desc: str = "evaluate",
) -> torch.Tensor:
    """:func:`masked_scores` with masks built lazily, chunk by chunk: ``mask_of(i)`` gives the
    (n, H, W) masks of the flat indices ``i`` (image ``i // k``, perturbation ``i % k``), so
    ``B * k`` masks never exist at once (pixel flipping of a 112 px image has 12,544 steps).

    Returns:
        (B, k) scores.
    """
    from convscope.engines.perturb import evaluate

    f = score_fn(score)
    b = x.shape[0]
    diff = x - baseline
    rows: list[torch.Tensor] = []  # the images of the chunk just built, for the score

    def make(start: int, stop: int) -> torch.Tensor:
        i = torch.arange(start, stop, device=x.device)
        r = i // k
        rows[:] = [r]
        return baseline[r] + mask_of(i)[:, None].to(x.dtype) * diff[r]

    def reduce(out: torch.Tensor) -> torch.Tensor:
        return f(out, targets[rows[0]])

    with state_guard(net):
        scores = evaluate(net, make, b * k, reduce, batch_size=batch_size, progress=progress,
                          desc=desc)
    return scores.view(b, k)
