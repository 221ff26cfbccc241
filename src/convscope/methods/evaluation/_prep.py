"""What every metric of the catalogue starts from: checked maps and masks, targets, baselines.

One place for the edge checks the metric families share: maps of the inputs' size and finite,
region masks that are neither empty nor the whole image, and the baseline vocabulary of
:func:`convscope.models.inputs.baseline` plus ``"min"`` (each image's own minimum over channels and
pixels: what Quantus calls ``"black"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.methods.evaluation._common import BaselineSpec, as_loaded, predict_targets
from convscope.methods.evaluation.curves import _check
from convscope.models import LoadedModel
from convscope.models.inputs import baseline as make_baseline

__all__ = [
    "Prepared", "check_finite", "check_maps", "check_masks", "image_minimum", "metric_baseline", "prepare",
]


def check_finite(maps: Any) -> torch.Tensor:
    """``maps`` as a float tensor of at least two dimensions (B, ...) with finite values.

    Raises:
        InputError: not a batch of maps, or a nan or infinite value.
    """
    try:
        m = torch.as_tensor(maps)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"maps must be a (B, H, W) tensor, got {type(maps).__name__}") from None
    if m.ndim < 2 or m.numel() == 0:
        raise InputError(f"maps must be a (B, H, W) batch, got shape {tuple(m.shape)}")
    if not torch.is_floating_point(m):
        m = m.float()
    if not bool(torch.isfinite(m).all()):
        raise InputError("the maps hold nan or infinite values; explain again or drop those images")
    return m


def check_maps(x: torch.Tensor, maps: Any) -> torch.Tensor:
    """``maps`` as a (B, H, W) float tensor that matches ``x`` (B, C, H, W) and is finite.

    Raises:
        InputError: a wrong shape, or a nan or infinite value.
    """
    return check_finite(_check(x, check_finite(maps)).detach())


def check_masks(maps: torch.Tensor, masks: Any, what: str = "this metric") -> torch.Tensor:
    """``masks`` as a (B, H, W) bool tensor matching ``maps``, each neither empty nor all true.

    Raises:
        InputError: no masks, a wrong shape, an empty or an all-true mask.
    """
    if masks is None:
        raise InputError(f"{what} needs region masks (masks=... or boxes); give the ground-truth regions")
    s = torch.as_tensor(masks).to(maps.device)
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != maps.shape:
        raise InputError(f"masks {tuple(s.shape)} do not match maps {tuple(maps.shape)}; expected (B, H, W)")
    s = s.bool()
    area = s.flatten(1).sum(1)
    if bool((area == 0).any()):
        i = int((area == 0).nonzero()[0])
        raise InputError(f"mask {i} is empty; every image needs a region to localise")
    if bool((area == s[0].numel()).any()):
        i = int((area == s[0].numel()).nonzero()[0])
        raise InputError(f"mask {i} covers the whole image; a region must leave some pixels outside")
    return s


def image_minimum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): each image's minimum over channels and pixels (Quantus's ``"black"``)."""
    return x.amin((1, 2, 3), keepdim=True).expand_as(x).clone()


def metric_baseline(x: torch.Tensor, spec: BaselineSpec, lm: LoadedModel) -> torch.Tensor:
    """The (B, C, H, W) baseline: ``"min"`` (each image's minimum) or
    :func:`convscope.models.inputs.baseline`'s vocabulary."""
    if isinstance(spec, str) and spec == "min":
        return image_minimum(x)
    return make_baseline(x, spec, lm.preprocessing)


@dataclass(frozen=True)
class Prepared:
    """A metric's starting point: the loaded model, detached inputs, checked maps, targets."""

    lm: LoadedModel
    x: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor

    @property
    def net(self) -> nn.Module:
        """The torch module."""
        return self.lm.model


def prepare(model: Any, x: torch.Tensor, maps: Any, targets: Any, batch_size: int | str) -> Prepared:
    """Load the model, check the maps against ``x`` and resolve the targets (default: predicted)."""
    lm = as_loaded(model)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError("inputs must be a (B, C, H, W) tensor")
    x = x.detach()
    m = check_maps(x, maps).to(x.device)
    t, _ = predict_targets(lm.model, x, targets, 64 if batch_size == "auto" else int(batch_size))
    return Prepared(lm, x, m, t)
