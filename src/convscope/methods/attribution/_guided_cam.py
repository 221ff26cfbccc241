"""Guided Grad-CAM's two gradients from one forward pass.

Guided Grad-CAM (:func:`~convscope.methods.attribution.cam.guided_gradcam`) multiplies guided
backprop's input gradient by Grad-CAM's map. Computed apart, the two halves cost two forward
passes: one with the guided rule at every rectifier and a graph from the input, one with the layer
captured. :func:`one_pass` makes one forward pass of each chunk with the guided rule recorded as a
:class:`~convscope.methods.attribution._guided.RuleSwitch` and the layer captured, then two
backward passes of the same graph:

1. ``dS/dA`` with the switch on ``"plain"``: the rectifiers above the layer give autograd's own
   ReLU gradient (the same kernels), so the gradient at the layer is Grad-CAM's, to the bit;
   this backward stops at the layer (the few operations above it);
2. ``dS/dx`` with the switch on ``"guided"``: guided backprop's gradient, to the bit (the capture
   adds only an identity clone to the graph).

Both go into the shared-work memo (:mod:`~convscope.methods.attribution._shared`) under the keys of
:func:`~convscope.methods.attribution._cam_engine.layer_pass` and of the guided input gradient, so
the two halves, run after it inside the same :func:`~convscope.methods.attribution._shared.
shared_work` block, find their values there and make no pass of their own. Where a value cannot
be shared (a callable target), is already in the memo, or the pass cannot serve (the score does
not depend on a layer), nothing is stored and the halves compute as before (and word any error).
"""

from __future__ import annotations

import torch

from convscope.methods.attribution._base import MethodContext
from convscope.methods.attribution._cam_engine import _LayerPass, capture_layers, layer_pass_parts
from convscope.methods.attribution._guided import RuleSwitch, relu_rules
from convscope.methods.attribution._shared import shared, stored
from convscope.methods.attribution.gradients import gradient_parts

__all__ = ["one_pass"]


def one_pass(ctx: MethodContext, nonrelu: str) -> int:
    """Store, for every chunk of ``ctx``, guided backprop's input gradient and Grad-CAM's layer
    pass, each from the same forward pass (see the module docstring).

    Must run inside a :func:`~convscope.methods.attribution._shared.shared_work` block.

    Returns:
        The number of chunks served by one forward pass.
    """
    assert ctx.model is not None
    served = 0
    for rows in ctx.chunks():
        lp_parts = layer_pass_parts(ctx, rows, True)
        g_parts = gradient_parts(ctx, rows, "guided", nonrelu)
        if lp_parts is None or g_parts is None or stored(lp_parts, ctx.model, ctx.x) or stored(
                g_parts, ctx.model, ctx.x):
            continue
        switch = RuleSwitch("plain")
        xb = ctx.x[rows].detach().requires_grad_(True)
        rules = relu_rules(switch, nonrelu=nonrelu, method="guided_backprop")
        with capture_layers(ctx) as cap, rules:
            out = ctx.model(xb)
            acts = [cap.activation(n) for n in ctx.layer]
            modules = [cap.modules[n] for n in ctx.layer]
        if not isinstance(out, torch.Tensor) or not all(a.requires_grad for a in acts):
            continue
        s, t = ctx.scores(out, rows)
        score = s.sum()
        at_layer = torch.autograd.grad(score, acts, allow_unused=True, retain_graph=True)
        if any(g is None for g in at_layer):
            continue
        switch.rule = "guided"
        (g,) = torch.autograd.grad(score, xb)
        logits = out.detach()
        labels = t.labels() or [None] * xb.shape[0]
        shared(g_parts, ctx.model, ctx.x, lambda g=g, logits=logits, labels=labels: (g, logits, labels))
        lp = _LayerPass(logits, [a.detach() for a in acts], [ga.detach() for ga in at_layer], modules, t)
        shared(lp_parts, ctx.model, ctx.x, lambda lp=lp: lp)
        served += 1
    return served
