"""Gradient attributions.

Vanilla saliency (Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks", 2014):
the map is ``M_ij = max_c |d S_t / d x_cij|``, the absolute gradient of the target class score
``S_t`` (the unnormalised logit) with respect to each input pixel, maximised over colour channels.
The raw signed gradient (B, C, H, W) is kept in ``Explanation.raw``.
"""

from __future__ import annotations

import torch

from ..registry import register
from ._base import MethodContext, MethodOutput

__all__ = ["input_gradient", "saliency"]


def input_gradient(ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """d(target score)/d(input) for the whole batch, in chunks of ``ctx.batch_size``.

    Returns:
        (grads (B, C, H, W), logits (B, K), targets).
    """
    assert ctx.model is not None
    grads, logits, targets = [], [], []
    for rows in ctx.chunks():
        xb = ctx.x[rows].detach().requires_grad_(True)
        out = ctx.model(xb)
        s, t = ctx.scores(out, rows)
        (g,) = torch.autograd.grad(s.sum(), xb)
        grads.append(g)
        logits.append(out.detach())
        targets.extend(t.labels() or [None] * xb.shape[0])
    return torch.cat(grads), torch.cat(logits), targets


@register(
    "saliency",
    family="gradient",
    summary="how much a tiny change of each pixel would change the class score (|gradient|, max "
    "over colour channels)",
    caveats="local and noisy: shows sensitivity, not contribution; saturated features get no "
    "gradient",
    reference="Simonyan et al. 2014, Deep Inside Convolutional Networks",
)
def saliency(ctx: MethodContext) -> MethodOutput:
    """Vanilla gradient saliency.

    Shape:
        map (B, H, W) = max over C of |grad|; raw (B, C, H, W) = signed gradient.
    """
    g, logits, targets = input_gradient(ctx)
    return MethodOutput(map=g.abs().amax(1), targets=targets, raw=g, logits=logits)
