"""Shared pieces of the evaluation metrics: model resolution, targets, baselines, scoring.

``masked_scores`` evaluates a model on many masked versions of each input, in batches, without
materialising all masked images at once. It is a stop-gap until the shared perturbation engine
(``convscope.perturb``) lands; then it delegates to the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..hooks import state_guard
from ..models import LoadedModel, load_model

__all__ = [
    "BaselineSpec",
    "as_loaded",
    "make_baseline",
    "masked_scores",
    "predict_targets",
    "score_fn",
]

#: A baseline: a number in model space, ``"blur"`` (Gaussian blur of the input), ``"black"``
#: (pixel value 0, needs the model's preprocessing) or a (C, H, W) / (B, C, H, W) tensor.
BaselineSpec = float | str | torch.Tensor


def as_loaded(model: str | nn.Module | LoadedModel) -> LoadedModel:
    """A :class:`LoadedModel` for any model spec (the same object for a loaded model)."""
    return load_model(model)


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
    """(targets (B,) long, logits (B, K)) where ``targets=None`` means the predicted class."""
    with state_guard(net), torch.no_grad():
        logits = torch.cat([net(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    if targets is None:
        t = logits.argmax(1)
    else:
        t = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise InputError(f"got {t.numel()} targets for {x.shape[0]} images")
        if ((t < 0) | (t >= logits.shape[1])).any():
            raise InputError(f"target out of range for a model with {logits.shape[1]} outputs")
    return t.clone(), logits


def make_baseline(
    x: torch.Tensor, baseline: BaselineSpec, lm: LoadedModel | None = None, *, blur_sigma: float | None = None
) -> torch.Tensor:
    """The (B, C, H, W) baseline image that removed pixels are replaced with.

    ``"blur"`` blurs with a Gaussian of ``blur_sigma`` pixels (default: 1/45 of the image side, the
    11-px/sigma-5 kernel of Petsiuk et al. at 224 px scaled to the input, at least 1 px).
    """
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(x.device, x.dtype)
        if b.ndim == 3:
            b = b.unsqueeze(0)
        try:
            return b.expand_as(x).clone()
        except RuntimeError:
            raise InputError(
                f"baseline of shape {tuple(baseline.shape)} does not fit inputs {tuple(x.shape)}"
            ) from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "black":
        if lm is None:
            raise InputError("baseline 'black' needs the model's preprocessing; pass a LoadedModel")
        return lm.preprocessing.normalize(torch.zeros_like(x))
    if baseline == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(1.0, max(x.shape[-2:]) / 45.0)
        r = max(1, int(round(3 * sigma)))
        k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (k / sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        pad = F.pad(x, (r, r, r, r), mode="replicate")
        out = F.conv2d(pad, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    raise InputError(
        f"unknown baseline {baseline!r}; use a number (model space), 'black', 'blur' or a tensor"
    )


def masked_scores(
    net: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    masks: torch.Tensor,
    targets: torch.Tensor,
    *,
    score: str = "probability",
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "evaluate",
) -> torch.Tensor:
    """Score ``net`` on ``baseline + mask * (x - baseline)`` for every mask of every image.

    Args:
        net: the model (put in eval mode with frozen weights for the call, then restored).
        x: (B, C, H, W) inputs; baseline: (B, C, H, W).
        masks: (B, K, H, W), 1 (or True) keeps the input pixel, 0 puts the baseline there.
        targets: (B,) class per image.
        score: ``"probability"`` or ``"logit"`` of the target class.
        batch_size: masked images per forward pass.

    Returns:
        (B, K) scores.
    """
    f = score_fn(score)
    b, k = masks.shape[:2]
    if masks.shape[0] != x.shape[0] or masks.shape[2:] != x.shape[-2:]:
        raise InputError(f"masks {tuple(masks.shape)} do not match inputs {tuple(x.shape)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size}")
    from tqdm.auto import tqdm

    # Stop-gap batched evaluator (until convscope.perturb lands): masked images are built per
    # chunk of (image, mask) pairs, never all at once.
    out = torch.empty(b * k, dtype=torch.float32, device=x.device)
    flat = masks.reshape(b * k, 1, *masks.shape[2:])
    diff = x - baseline
    with state_guard(net), torch.no_grad():
        for s in tqdm(range(0, b * k, batch_size), desc=desc, disable=not progress, leave=False):
            idx = torch.arange(s, min(s + batch_size, b * k), device=x.device)
            rows = idx // k
            m = flat[idx].to(x.dtype)
            batch = baseline[rows] + m * diff[rows]
            out[idx] = f(net(batch), targets[rows])
    return out.view(b, k)
