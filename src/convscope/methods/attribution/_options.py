"""Groups of method options that several methods share, each declared once as a frozen dataclass
and given to a method by one decorator (:func:`with_options`).

A method lists the group's options as ordinary keywords (its signature, annotations and
docstring show them, so the registry lists and checks them like any other option) and receives
them as one value. The groups: the engine options (:class:`._engine.Engine`,
:func:`._engine.with_engine`), the sampling options of the methods that sample until stable
(:class:`Sampling`: RISE, Kernel SHAP) and the superpixel options of the segment methods
(:class:`Segmentation`: Kernel SHAP).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convscope.core.validate import group_parameters
from convscope.engines.perturb import DEFAULT_CONVERGE
from convscope.methods.attribution._base import MethodContext, MethodOutput

__all__ = ["Sampling", "Segmentation", "with_options", "with_sampling", "with_segmentation"]

Method = Callable[..., MethodOutput]


def with_options(group: type, param: str, docs: str, hints: dict[str, Any] | None = None,
                 **defaults: Any) -> Callable[[Method], Method]:
    """Give a method the fields of the frozen dataclass ``group`` as keyword options, handed to it
    as one ``group`` value in its parameter ``param``.

    The fields take the place of ``param`` in the method's signature, with the dataclass's
    defaults (or ``defaults``) and field types (or ``hints``); ``docs`` (their ``Args:`` lines,
    formatted with the defaults) go first in the method's ``Args:``.

    Args:
        group: a dataclass whose fields all have defaults.
        param: the method's parameter that receives the value.
        docs: the docstring lines of the fields, indented 8 spaces; ``{name}`` is the default
            of field ``name``.
        hints: annotations that replace the dataclass's (what the registry reads as the type).
        **defaults: this method's defaults, where they differ from the dataclass's.
    """
    own = group_parameters(group, inspect.Parameter.POSITIONAL_OR_KEYWORD, hints, **defaults)
    hints = {q.name: q.annotation for q in own}
    defaults = {q.name: q.default for q in own}
    doc_lines = docs.format(**defaults)

    def deco(func: Method) -> Method:
        sig = inspect.signature(func)
        params = [q for p in sig.parameters.values() for q in (own if p.name == param else [p])]
        flat = sig.replace(parameters=params)

        @functools.wraps(func)
        def method(ctx: MethodContext, *args: Any, **kwargs: Any) -> MethodOutput:
            given = flat.bind(ctx, *args, **kwargs).arguments  # by name, however they were passed
            del given[params[0].name]
            value = group(**{k: given.pop(k, d) for k, d in defaults.items()})
            return func(ctx, **given, **{param: value})

        method.__signature__ = flat  # type: ignore[attr-defined]
        method.__annotations__ = {**{k: v for k, v in func.__annotations__.items() if k != param}, **hints}
        doc = func.__doc__ or ""
        at = doc.find("    Args:\n")
        if at >= 0:
            at += len("    Args:\n")
            method.__doc__ = doc[:at] + doc_lines + doc[at:]
        return method

    return deco


@dataclass(frozen=True)
class Sampling:
    """How a sampling method scores its samples and when it stops (:func:`._surrogate.until_stable`).

    Attributes:
        score: ``"raw"`` (the model's outputs) or ``"softmax"`` (probabilities).
        converge: the stopping rule's tolerance (:class:`~convscope.engines.perturb.Convergence`);
            ``None`` or 0: use every sample.
        check_every: samples per round, and between convergence checks.
    """

    score: str = "raw"
    converge: float | None = DEFAULT_CONVERGE
    check_every: int = 100


_SAMPLING_DOCS = """\
        score: ``"raw"`` (the model's outputs) or ``"softmax"`` (probabilities); default
            ``"{score}"``.
        converge: stop once the estimate correlates with the previous check's at ``1 - converge``
            or more (default {converge}, :class:`~convscope.engines.perturb.Convergence`); ``None`` or 0:
            use every sample.
        check_every: samples per round, and between convergence checks (default {check_every}).
"""


def with_sampling(**defaults: Any) -> Callable[[Method], Method]:
    """Give a method the :class:`Sampling` options (``score``, ``converge``, ``check_every``;
    ``defaults``: the method's own defaults), handed to it as one value in ``sampling``."""
    return with_options(Sampling, "sampling", _SAMPLING_DOCS, **defaults)


@dataclass(frozen=True)
class Segmentation:
    """How a segment method cuts each image into superpixels (:func:`.segments.segment`), and what a
    hidden one shows (:func:`.segments.hidden`).

    Attributes:
        segmentation: ``"slic"``, ``"quickshift"``, ``"felzenszwalb"``, ``"grid"``, or an
            (H, W) / (B, H, W) integer mask of segments.
        n_segments: SLIC's target number of segments.
        cell: grid cell size in px (``segmentation="grid"``).
        segment_options: extra keyword arguments for the scikit-image segmentation.
        hide: what replaces a hidden segment: a baseline of :func:`~convscope.models.inputs.baseline`
            or ``"segment_mean"`` (its mean colour).
    """

    segmentation: str | np.ndarray | torch.Tensor = "slic"
    n_segments: int = 50
    cell: int | None = None
    segment_options: dict[str, Any] | None = None
    hide: str | float | torch.Tensor = "grey"

    @property
    def options(self) -> dict[str, Any]:
        """The keywords of :func:`.segments.segment` besides ``segmentation``."""
        return {"n_segments": self.n_segments, "cell": self.cell, "segment_options": self.segment_options}


_SEGMENTATION_DOCS = """\
        segmentation: ``"slic"``, ``"quickshift"``, ``"felzenszwalb"``, ``"grid"``, or an
            (H, W) / (B, H, W) integer mask of segments.
        n_segments: SLIC's target number of segments.
        cell: grid cell size in px (``segmentation="grid"``).
        segment_options: extra keyword arguments for the scikit-image segmentation.
        hide: what replaces a hidden segment: ``"{hide}"`` (default) or any baseline of
            :func:`~convscope.models.inputs.baseline`, or ``"segment_mean"`` (its mean colour).
"""

#: Give a method the :class:`Segmentation` options, handed to it as one value in ``segments``.
with_segmentation = with_options(Segmentation, "segments", _SEGMENTATION_DOCS)
