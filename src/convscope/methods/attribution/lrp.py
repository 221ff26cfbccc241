"""Layer-wise relevance propagation (LRP), on zennit's rules, composites and canonizers.

Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation", PLoS ONE 2015; Montavon et al., "Layer-Wise Relevance Propagation: An
Overview", 2019; Kohlbrenner et al., "Towards Best Practice in Explaining Neural Network
Decisions with LRP", IJCNN 2020 (the composites).

The target's score is handed down the network layer by layer, each layer sharing the relevance
``R_j`` of its outputs among its inputs ``x_i`` in proportion to their contributions ``z_ij``:

* epsilon rule (fully connected layers): ``R_i = sum_j x_i w_ij / (z_j + eps sign(z_j)) R_j``;
* z+ rule (convolutions in ``epsilon_plus``): only positive contributions ``(x_i w_ij)^+``;
* alpha2-beta1: ``2 x (positive share) - 1 x (negative share)``;
* gamma rule: ``(w + gamma w^+)`` in place of ``w``; box (z^B) rule for the first layer: inputs
  bounded by the box ``[low, high]``, here the model space image of pixels in [0, 1];
* flat rule (first layer in the ``*_flat`` composites): relevance spread evenly over each unit's
  receptive field, independent of the input.

The initial relevance is the target's score itself: ``out * dS/dout`` at the model's output (the
target logit for a class; ``z_a e_a - z_b e_b`` for a contrast ``a - b``), so that, where the rules
conserve relevance, the map sums to the explained score. How far it does is recorded per image
(``diagnostics["relevance_sum"]``, ``["target_score"]``): biases absorb relevance, so on a network
with biases the sum differs from the score. See ``docs/lrp.md`` for what each composite conserves.

``raw`` is the relevance of every input value (B, C, H, W); ``map`` its sum over channels (signed).
What was applied (composite, canonizers, the layer that got the first-layer rule, the box) is
recorded in ``diagnostics["lrp"]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convscope.core.validate import reals
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._lrp import (
    COMPOSITES,
    INSTALL,
    LrpSetup,
    box_of,
    lrp_rules,
    restored,
    zennit,
)
from convscope.methods.registry import CueClaim, register
from convscope.models.outputs import unwrap

__all__ = ["COMPOSITES", "INSTALL", "LrpSetup", "box_of", "initial_relevance", "lrp", "lrp_rules",
           "restored", "zennit"]


def initial_relevance(out: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The relevance the backward pass starts from: ``out * dS/dout`` (S summed over the batch).

    Args:
        out: (B, K) model outputs, part of the autograd graph of ``score``.
        score: (B,) the explained scores, functions of ``out``.

    Returns:
        (B, K): the target logit at the target class for a class target (zero elsewhere).
    """
    (g,) = torch.autograd.grad(score.sum(), out, retain_graph=True)
    return g * out.detach()


@register(
    "lrp",
    family="gradient",
    signed=True,
    options={"composite": "epsilon_plus_flat"},
    ranges={"epsilon": reals(0.0, 1e6, lo_open=True), "gamma": reals(0.0, 1e3)},
    choices={"composite": COMPOSITES},
    summary="layer-wise relevance propagation: the class score handed down layer by layer with "
    "zennit's rules, so each pixel gets its share of the score (signed)",
    caveats="defined for ReLU networks of convolutions, linear layers, pooling and batch norms; other "
    "activations and attention are refused; needs zennit (pip install 'convscope[lrp]')",
    reference="Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by "
    "Layer-Wise Relevance Propagation; Kohlbrenner et al. 2020 (composites)",
    claims=(
        CueClaim(n=200, at_least=0.75, clean_below=0.12, measured=0.88,
                 note="epsilon_plus_flat; clean model 0.055 (epsilon_gamma_box 0.915 / 0.065, "
                 "epsilon_alpha2_beta1 0.995 / 0.145)"),
    ),
)
def lrp(ctx: MethodContext, composite: str = "epsilon_plus_flat", epsilon: float = 1e-6,
        gamma: float = 0.25) -> MethodOutput:
    """LRP relevance of each input value for the target score.

    Args:
        composite: the rules per layer type: ``epsilon_plus``, ``epsilon_plus_flat`` (default),
            ``epsilon_gamma_box`` (box from the model's preprocessing), ``epsilon_alpha2_beta1``,
            ``epsilon_alpha2_beta1_flat`` or ``excitation_backprop``.
        epsilon: the epsilon rule's stabiliser (fully connected layers).
        gamma: the gamma rule's weight of positive contributions (``epsilon_gamma_box`` only).

    Shape:
        map (B, H, W) = relevance summed over C (signed); raw (B, C, H, W) = relevance.
    """
    assert ctx.model is not None
    net: nn.Module = unwrap(ctx.model)
    rel, logits, targets, sums, scores = [], [], [], [], []
    with lrp_rules(net, composite, epsilon=epsilon, gamma=gamma, preprocessing=ctx.preprocessing,
                   channels=ctx.x.shape[1]) as setup:
        for rows in ctx.chunks():
            xb = ctx.x[rows].detach().requires_grad_(True)
            out = setup.forward(ctx.model, xb)
            s, t = ctx.scores(out, rows)
            start = initial_relevance(out, s)
            (r,) = torch.autograd.grad(out, xb, grad_outputs=start)
            rel.append(r.detach())
            logits.append(out.detach())
            targets.extend(t.labels() or [None] * xb.shape[0])
            sums.append(r.detach().flatten(1).sum(1))
            scores.append(start.sum(1))
    r = torch.cat(rel)
    diagnostics: dict[str, Any] = {"lrp": setup.info(), "relevance_sum": torch.cat(sums).tolist(),
                                   "target_score": torch.cat(scores).tolist()}
    return MethodOutput(map=r.sum(1), targets=targets, raw=r, logits=torch.cat(logits),
                        diagnostics=diagnostics)
