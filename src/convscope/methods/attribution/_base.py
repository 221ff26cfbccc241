"""What the facade hands a method, and what a method hands back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.core.targets import ResolvedTarget, TargetSpec, resolve_target, select_scores
from convscope.models.preprocessing import Preprocessing

__all__ = ["MethodContext", "MethodOutput"]


@dataclass
class MethodContext:
    """Everything a method function needs.

    Attributes:
        model: the network, in eval mode with frozen weights for the call (``None`` for a black
            box, in which case ``predict`` is set).
        x: (B, C, H, W) inputs in model space; a private copy, never the caller's tensor.
        target: the caller's target spec; resolve with :meth:`resolve`.
        layer: resolved dotted layer names (``[]`` if the method needs none).
        class_names: names of the outputs.
        batch_size: at most this many samples go through the model at once.
        seed: seed for random methods.
        predict: ``predict(batch) -> scores`` for black-box methods.
        preprocessing: how pixels map to ``x`` (for pixel-space baselines,
            :func:`convscope.models.inputs.baseline`); ``None``: ``x`` is pixels.
    """

    model: nn.Module | None
    x: torch.Tensor
    target: TargetSpec
    layer: list[str]
    class_names: Sequence[str]
    batch_size: int
    seed: int
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    preprocessing: Preprocessing | None = None

    def resolve(self, output: torch.Tensor, rows: slice | None = None) -> ResolvedTarget:
        """Resolve the target against ``output`` (the logits of ``x[rows]``)."""
        spec = self.target
        if isinstance(spec, ResolvedTarget) and rows is not None:
            spec = spec.take(rows)
        elif isinstance(spec, (list, tuple)) and rows is not None and not (
            isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "top"
        ):
            spec = list(spec)[rows]
        elif isinstance(spec, torch.Tensor) and spec.ndim == 1 and rows is not None:
            spec = spec[rows]
        return resolve_target(spec, output, self.class_names)

    def scores(self, output: torch.Tensor, rows: slice | None = None) -> tuple[torch.Tensor, ResolvedTarget]:
        """(target scores of shape (b,), resolved target) for ``output``."""
        t = self.resolve(output, rows)
        return select_scores(output, t), t

    def chunks(self) -> list[slice]:
        """Slices of the batch of at most ``batch_size`` samples."""
        n = self.x.shape[0]
        return [slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]


@dataclass
class MethodOutput:
    """A method's result.

    Attributes:
        map: (B, h, w) attribution map (the facade upsamples it to the input size if smaller).
        targets: class index per sample (``None`` for callable targets).
        raw: optional full-resolution raw attribution, e.g. the signed gradient (B, C, H, W).
        logits: (B, K) model outputs if the method computed them.
        diagnostics: numbers that qualify the result (e.g. a completeness gap).
        normalize: how the map is best displayed (``"auto"``; ``"minmax"`` for maps that sit on a
            large constant offset, such as RISE's expected score, so their structure shows).
    """

    map: torch.Tensor
    targets: list[int | None]
    raw: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    normalize: str = "auto"
