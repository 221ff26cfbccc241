"""Explainers: what the metrics that re-run an attribution (sanity check, max-sensitivity) call.

An explainer is a callable ``f(lm, x, targets) -> maps``: a loaded model, a (B, C, H, W) batch in
model space and (B,) target classes in, (B, H, W) maps out. :func:`as_explainer` turns a registered
method name into one (through :func:`convscope.explain`); any function with that signature works
too, e.g. :func:`sobel_explainer`, an edge detector that ignores the model and therefore must fail
the model-randomisation check (Adebayo et al. 2018 use it as their control).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from convscope.models import LoadedModel

__all__ = [
    "Explainer", "MethodExplainer", "as_explainer", "explained_batch", "explainer_name", "sobel_explainer",
]


class Explainer(Protocol):
    def __call__(self, lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class MethodExplainer:
    """A registered method as an explainer.

    Attributes:
        method: registry name.
        layer: layer for layer methods (default: the model's).
        options: method options.
        batch_size, seed: passed to :func:`convscope.explain`.
    """

    method: str
    layer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    seed: int = 0

    @property
    def name(self) -> str:
        return self.method

    def __call__(self, lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from convscope.methods.explain import explain

        e = explain(lm, x, method=self.method, target=[int(t) for t in targets.tolist()],
                    layer=self.layer, batch_size=self.batch_size, seed=self.seed, **self.options)
        return e.map


def as_explainer(spec: str | Callable[..., torch.Tensor], *, fast: bool = False,
                 **options: Any) -> Callable[..., torch.Tensor]:
    """A method name (with ``options``; ``fast=True`` adds the method's ``fast_options``) or an
    explainer callable, returned as an explainer."""
    if isinstance(spec, str):
        from convscope.methods.registry import get_method

        info = get_method(spec)
        base = dict(info.fast_options) if fast else {}
        layer = options.pop("layer", None)
        batch_size = options.pop("batch_size", 32)
        seed = options.pop("seed", 0)
        return MethodExplainer(spec, layer, {**base, **options}, batch_size, seed)
    return spec


def explained_batch(
    model: Any,
    x: torch.Tensor,
    explainer: str | Callable[..., torch.Tensor],
    targets: Any,
    maps: torch.Tensor | None,
    *,
    batch_size: int,
    seed: int,
) -> tuple[LoadedModel, Callable[..., torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a metric that re-runs the explainer starts from: the loaded model, the explainer
    (a method name made one with ``batch_size`` and ``seed``), ``x`` detached, the target per
    image (default: the predicted class) and the maps at ``x`` (``maps``, or computed here).
    ``batch_size`` and ``seed`` are checked first (their ranges in ``METRIC_RANGES``)."""
    from convscope.methods.evaluation._common import as_loaded, predict_targets
    from convscope.methods.evaluation._options import check_ranges

    check_ranges(seed=seed, batch_size=batch_size)

    lm = as_loaded(model)
    ex = as_explainer(explainer, batch_size=batch_size, seed=seed) if isinstance(explainer, str) \
        else explainer
    x = x.detach()
    t, _ = predict_targets(lm.model, x, targets, batch_size)
    if maps is None:
        maps = ex(lm, x, t)
    return lm, ex, x, t, maps


def explainer_name(explainer: Any) -> str:
    """A display name for an explainer."""
    return str(getattr(explainer, "name", None) or getattr(explainer, "__name__", None)
               or type(explainer).__name__)


def sobel_explainer(lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude of the channel-mean input: an "explanation" that ignores the model.

    Shape:
        x (B, C, H, W) -> (B, H, W).
    """
    g = x.detach().float().mean(1, keepdim=True)
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=g.device)
    k = torch.stack([kx, kx.T])[:, None]
    d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    return d.square().sum(1).sqrt()


sobel_explainer.name = "sobel edges (ignores the model)"  # type: ignore[attr-defined]
