"""Axiomatic metrics: does the map obey a property an attribution should have?

* :func:`completeness` (Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks",
  ICML 2017): the attributions sum to the output difference, ``sum_i a_i = f(x) - f(x')`` with
  ``x'`` the baseline. Returned as the relative residual
  ``|sum_i a_i - (f(x) - f(x'))| / max(|f(x) - f(x')|, 1e-12)``: **lower is better**, 0 for a
  complete method. Quantus 0.6.0 returns ``sum a == f(x) - f(x')`` as an exact float equality,
  false for every method that sums in another order; the residual is what the axiom measures.
* :func:`non_sensitivity` (Nguyen and Martinez, "On Quantitative Aspects of Model
  Interpretability", 2020): the number of pixels where the map and the model disagree about
  whether the pixel matters: ``|a_i| < eps`` while removing it moves the score by ``eps`` or
  more, or the reverse. **Lower is better**. Quantus 0.6.0 tests ``a_i < eps`` (so every
  negative attribution counts as "no attribution"); this tests ``|a_i|`` as the paper does.
* :func:`input_invariance` (Kindermans et al., "The (Un)reliability of Saliency Methods", 2017):
  shift every input by a constant ``c`` and compensate in the first layer's bias, ``b' = b - W c``,
  so the shifted model on ``x + c`` computes exactly what the model computes on ``x``; a method is
  input invariant when its map does not change. 1 where every value stays within ``atol`` (1e-4,
  as Quantus), else 0: **higher is better**. Quantus 0.6.0 takes the first layer's output on a
  constant input and keeps its *smallest* value per channel as ``W c + b``, which is a border
  value when the layer pads with zeros; this uses the interior value ``W c + b`` as the paper
  does. With zero padding the compensation is inexact at the borders: the shifted model's outputs
  are compared with the model's, and a difference beyond ``atol`` warns that the score is
  unreliable.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.core.hooks import state_guard
from convscope.core.validate import check_values, reals
from convscope.methods.evaluation._common import BaselineSpec, mixed_scores
from convscope.methods.evaluation._prep import metric_baseline, prepare
from convscope.methods.evaluation.faithfulness import _step
from convscope.models import LoadedModel
from convscope.models.forward import chunked_outputs

__all__ = ["completeness", "input_invariance", "non_sensitivity", "shifted_model"]

Model = str | nn.Module | LoadedModel


def completeness(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    baseline: BaselineSpec = "black",
    score: str = "logit",
    batch_size: int | str = "auto",
) -> torch.Tensor:
    """(B,) relative completeness residual of ``maps`` against ``f(x) - f(baseline)`` (the
    target's logit by default; integrated gradients uses the same baseline)."""
    p = prepare(model, x, maps, targets, batch_size)
    base = metric_baseline(p.x, baseline, p.lm)
    h, w = p.x.shape[-2:]

    def mask_of(i: torch.Tensor) -> torch.Tensor:  # column 0: the input, column 1: the baseline
        return (i % 2 == 0)[:, None, None].expand(-1, h, w)

    out = mixed_scores(p.net, p.x, base, 2, mask_of, p.targets, score=score, batch_size=batch_size,
                       progress=False).double().cpu()
    diff = out[:, 0] - out[:, 1]
    total = p.maps.double().flatten(1).sum(1).cpu()
    return ((total - diff).abs() / diff.abs().clamp(min=1e-12)).float()


def non_sensitivity(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    eps: float = 1e-5,
    features_in_step: int = 1,
    baseline: BaselineSpec = "black",
    score: str = "probability",
    batch_size: int | str = "auto",
    progress: bool | None = None,
) -> torch.Tensor:
    """(B,) number of pixel groups where "no attribution" (every ``|a_i| < eps`` in the group)
    disagrees with "no effect" (``|f(x) - f(x_{G = baseline})| < eps``), each group removed on its
    own. Groups are ``features_in_step`` consecutive pixels in row-major order (default 1: single
    pixels, as Quantus, whose version only runs with 1); ``eps`` default 1e-5, as Quantus."""
    check_values(eps=(eps, reals(0, lo_open=True)))
    p = prepare(model, x, maps, targets, batch_size)
    base = metric_baseline(p.x, baseline, p.lm)
    h, w = p.x.shape[-2:]
    s = _step(h * w, features_in_step)
    g = h * w // s
    group = torch.arange(h * w, device=p.x.device) // s

    def mask_of(i: torch.Tensor) -> torch.Tensor:  # column 0: intact, column j: group j - 1 removed
        return (group[None] != (i % (g + 1))[:, None] - 1).view(-1, h, w)

    out = mixed_scores(p.net, p.x, base, g + 1, mask_of, p.targets, score=score, batch_size=batch_size,
                       progress=progress, desc="non-sensitivity").double().cpu()
    still = (out[:, 1:] - out[:, :1]).abs() < eps
    empty = (p.maps.abs().flatten(1).cpu() < eps).view(p.maps.shape[0], g, s).all(-1)
    return (still ^ empty).sum(1)


def shifted_model(net: nn.Module, shift: float) -> tuple[nn.Module, str]:
    """(a deep copy of ``net`` whose first layer's bias absorbs an input shift of ``shift``, the
    layer's name): the copy on ``x + shift`` computes what ``net`` computes on ``x`` (exactly for
    a linear layer or an unpadded convolution). The first layer is the first ``Conv2d`` or
    ``Linear`` in ``named_modules()`` order (the forward order of sequential models).

    Raises:
        InputError: no such layer, or one without a bias.
    """
    import copy

    first = next(((n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise InputError("input_invariance needs a model whose first layer is a Conv2d or a Linear")
    name, layer = first
    if layer.bias is None:
        raise InputError(f"input_invariance needs a bias in the first layer {name!r} to absorb the shift; "
                         "this model's first layer has none")
    twin = copy.deepcopy(net)
    mod = dict(twin.named_modules())[name]
    with torch.no_grad():
        w = mod.weight
        moved = w.sum(tuple(range(1, w.ndim))) * shift  # W c: every input value shifted by c
        mod.bias.sub_(moved)
    return twin, name


def input_invariance(
    model: Model,
    x: torch.Tensor,
    explainer: Any,
    *,
    targets: Any = None,
    shift: float = -1.0,
    atol: float = 1e-4,
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
    notes: list[str] | None = None,
) -> torch.Tensor:
    """(B,) 1.0 where the map of the bias-compensated model on ``x + shift`` equals the map on
    ``x`` within ``atol`` (default shift -1 model-space units and atol 1e-4, as Quantus), else 0.0;
    higher is better. Warns (:class:`~convscope.core.errors.UnreliableResultWarning`) where the
    compensation is inexact (a zero-padded first convolution), or appends that line to ``notes``
    when given (how :func:`~convscope.evaluate` fills :attr:`MetricTable.notes`).
    """
    from dataclasses import replace

    from convscope.methods.evaluation.explainers import explained_batch

    check_values(shift=(shift, reals()), atol=(atol, reals(0)))
    lm, ex, x, t, maps = explained_batch(model, x, explainer, targets, maps, batch_size=batch_size, seed=seed)
    twin, name = shifted_model(lm.model, shift)
    xs = x + shift
    with state_guard(lm.model), state_guard(twin), torch.no_grad():
        gap = float((chunked_outputs(twin, xs, batch_size)
                     - chunked_outputs(lm.model, x, batch_size)).abs().max())
    if gap > atol:
        note = (f"input_invariance: the shifted model's outputs differ from the model's by {gap:.2g} "
                f"(the first layer {name!r} pads with zeros, so the bias absorbs the shift only away "
                "from the borders); the score is unreliable")
        if notes is None:
            warnings.warn(note, UnreliableResultWarning, stacklevel=2)
        else:
            notes.append(note)
    moved = ex(replace(lm, model=twin), xs, t)
    same = ((moved.detach().double() - maps.detach().double()).abs() <= atol).flatten(1).all(1)
    return same.float().cpu()
