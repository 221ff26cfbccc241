"""Gradient attributions: saliency, gradient x input, guided backprop, deconvnet.

For the CAM half (guided Grad-CAM): call :func:`guided_gradient` ``(ctx, rule="guided")``, which
returns ``(grads (B, C, H, W), logits (B, K), targets)`` like :func:`input_gradient`, or
``convscope.get_method("guided_backprop")`` whose ``MethodOutput.raw`` is the same gradient.

All maps explain the target class score ``S_t`` (the unnormalised logit, or a callable target's
score) of the model-space input ``x``:

* **saliency** (Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks", 2014):
  ``M_ij = max_c |dS_t/dx_cij|``. ``raw`` holds the signed gradient (B, C, H, W).
* **gradient_x_input** (Shrikumar et al., "Not Just a Black Box", 2016): ``M_ij = sum_c x_cij *
  dS_t/dx_cij`` (signed; ``x`` in model space, i.e. after normalisation). ``raw`` holds
  ``x * grad`` per channel. For a linear model it is each pixel's exact additive contribution
  relative to an all-zero input.
* **guided_backprop** (Springenberg et al., "Striving for Simplicity: The All Convolutional Net",
  2015): the gradient computed with every ReLU's backward replaced by ``relu(g) * [x > 0]``;
  ``M_ij = max_c |G_cij|``, ``raw`` = signed G.
* **deconvnet** (Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", 2014):
  every ReLU's backward replaced by ``relu(g)``; map and raw as for guided backprop.

The ReLU rules are applied by a scoped function mode (see :mod:`convscope.methods.attribution._guided`):
in-place ReLUs, ``F.relu`` calls in ``forward``, ReLU6 and modules called twice all get the rule;
activations without a rule (SiLU, GELU, Hardswish, ...) raise a ``MethodError`` unless
``nonrelu="gradient"`` lets them pass the ordinary gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._guided import NONRELU_CHOICES, relu_rules
from convscope.methods.attribution._shared import shared, target_key
from convscope.methods.registry import CueClaim, register

__all__ = [
    "deconvnet",
    "gradient_parts",
    "gradient_x_input",
    "guided_backprop",
    "guided_gradient",
    "input_gradient",
    "saliency",
]


def _chunk_gradient(
    ctx: MethodContext, rows: slice, rule: str | None, nonrelu: str, method: str | None
) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """(d(target score)/d(input), logits, targets) of ``ctx.x[rows]`` under backward ``rule``."""
    assert ctx.model is not None
    xb = ctx.x[rows].detach().requires_grad_(True)
    scope = (
        relu_rules(rule, nonrelu=nonrelu, method=method)
        if rule is not None
        else contextlib.nullcontext()
    )
    with scope:
        out = ctx.model(xb)
    s, t = ctx.scores(out, rows)
    (g,) = torch.autograd.grad(s.sum(), xb)
    return g, out.detach(), t.labels() or [None] * xb.shape[0]


def gradient_parts(ctx: MethodContext, rows: slice, rule: str | None, nonrelu: str) -> tuple[Any, ...] | None:
    """The shared-work key of the input gradient of ``rows`` under backward ``rule`` (``None``:
    not shared)."""
    tk = target_key(ctx.target, ctx.class_names)
    return None if tk is None else (
        "input_gradient", rows.start, rows.stop, rule, None if rule is None else nonrelu, tk)


def _gradient(
    ctx: MethodContext, rule: str | None = None, nonrelu: str = "error", method: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """The input gradient of every chunk, each shared within a
    :func:`~convscope.methods.attribution._shared.shared_work` block (saliency and gradient x input need
    the same one, guided Grad-CAM guided backprop's); new tensors on every call."""
    assert ctx.model is not None
    grads, logits, targets = [], [], []
    for rows in ctx.chunks():
        parts = gradient_parts(ctx, rows, rule, nonrelu)
        g, out, labels = shared(parts, ctx.model, ctx.x,
                                lambda rows=rows: _chunk_gradient(ctx, rows, rule, nonrelu, method))
        grads.append(g)
        logits.append(out)
        targets.extend(labels)
    return torch.cat(grads), torch.cat(logits), targets


def input_gradient(ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """d(target score)/d(input) for the whole batch, in chunks of ``ctx.batch_size``.

    Returns:
        (grads (B, C, H, W), logits (B, K), targets).
    """
    return _gradient(ctx)


def guided_gradient(
    ctx: MethodContext, *, rule: str = "guided", nonrelu: str = "error"
) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """The guided-backprop (``rule="guided"``) or deconvnet (``rule="deconvnet"``) gradient.

    Args:
        ctx: the method context (targets, batch size as for any method).
        rule: ``"guided"`` or ``"deconvnet"``.
        nonrelu: ``"error"`` (default) refuses SiLU, GELU, Hardswish and other activations that
            have no rule; ``"gradient"`` lets them pass the ordinary gradient.

    Returns:
        (grads (B, C, H, W), logits (B, K), targets).
    """
    name = "guided_backprop" if rule == "guided" else "deconvnet"
    return _gradient(ctx, rule=rule, nonrelu=nonrelu, method=name)


@register(
    "saliency",
    family="gradient",
    summary="how much a tiny change of each pixel would change the class score (|gradient|, max "
    "over colour channels)",
    caveats="local and noisy: shows sensitivity, not contribution; saturated features get no "
    "gradient",
    reference="Simonyan et al. 2014, Deep Inside Convolutional Networks",
    claims=(
        CueClaim(n=200, at_least=0.75, clean_below=0.1, measured=0.85, note='clean model 0.025'),
    ),
)
def saliency(ctx: MethodContext) -> MethodOutput:
    """Vanilla gradient saliency.

    Shape:
        map (B, H, W) = max over C of |grad|; raw (B, C, H, W) = signed gradient.
    """
    g, logits, targets = input_gradient(ctx)
    return MethodOutput(map=g.abs().amax(1), targets=targets, raw=g, logits=logits)


@register(
    "gradient_x_input",
    family="gradient",
    signed=True,
    summary="gradient times input, summed over colour channels: each pixel's first-order "
    "contribution to the class score relative to an all-zero (model-space) input",
    caveats="signed; depends on where zero lies in model space (the mean colour after "
    "normalisation); as noisy as the gradient",
    reference="Shrikumar et al. 2016, Not Just a Black Box: Learning Important Features Through "
    "Propagating Activation Differences",
    claims=(
        CueClaim(n=200, at_least=0.7, clean_below=0.15, measured=0.795),
    ),
)
def gradient_x_input(ctx: MethodContext) -> MethodOutput:
    """Gradient x input.

    Shape:
        map (B, H, W) = sum over C of x * grad (signed); raw (B, C, H, W) = x * grad.
    """
    g, logits, targets = input_gradient(ctx)
    gx = g * ctx.x
    return MethodOutput(map=gx.sum(1), targets=targets, raw=gx, logits=logits)


def _rule_method(ctx: MethodContext, rule: str, nonrelu: str) -> MethodOutput:
    g, logits, targets = guided_gradient(ctx, rule=rule, nonrelu=nonrelu)
    return MethodOutput(map=g.abs().amax(1), targets=targets, raw=g, logits=logits)


_NONRELU_ARG = ('nonrelu: ``"error"`` refuses activations without a rule (SiLU, GELU, Hardswish, ...); '
                '``"gradient"`` lets them pass the ordinary gradient.')


def _register_rule(name: str, rule: str, doc: str, what: str, **meta: Any) -> Callable[..., MethodOutput]:
    """Register ``name``: the input gradient with backward ``rule`` at every ReLU (see
    :func:`~._guided.guided_gradient`) and the ``nonrelu`` option."""

    def method(ctx: MethodContext, nonrelu: str = "error") -> MethodOutput:
        return _rule_method(ctx, rule, nonrelu)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"{doc}\n\nArgs:\n    {_NONRELU_ARG}\n\nShape:\n    map (B, H, W) = max over C "
                      f"of |{what}|; raw (B, C, H, W) = signed {what}.\n")
    return register(name, family="gradient", options={"nonrelu": "error"},
                    choices={"nonrelu": NONRELU_CHOICES}, **meta)(method)


guided_backprop = _register_rule(
    "guided_backprop", "guided", "Guided backpropagation.", "guided gradient G",
    summary="the gradient with negative signals stopped at every ReLU on the way back: sharp, "
    "edge-like pictures of the input patterns that raise the score",
    caveats="nearly class-insensitive (shows the image's edges for any class) and insensitive to "
    "the deeper layers' weights (Adebayo et al. 2018); defined for ReLU/ReLU6 networks only "
    "(nonrelu='gradient' passes other activations unchanged)",
    reference="Springenberg et al. 2015, Striving for Simplicity: The All Convolutional Net",
    claims=(
        CueClaim(n=200, at_least=0.75, clean_below=0.15, measured=0.86),
    ),
)
deconvnet = _register_rule(
    "deconvnet", "deconvnet", "Deconvnet attribution.", "deconvnet signal D",
    summary="the score propagated back with every ReLU applied to the backward signal instead of "
    "gated by the forward pass (Zeiler and Fergus' deconvolution network)",
    caveats="ignores which units were active, so it shows the patterns a class responds to more "
    "than where they are in this image; defined for ReLU/ReLU6 networks only",
    reference="Zeiler and Fergus 2014, Visualizing and Understanding Convolutional Networks",
    claims=(
        CueClaim(n=200, at_least=0.65, clean_below=0.15, measured=0.77),
    ),
)
