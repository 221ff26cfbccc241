"""Concept-conditional relevance in batched backward passes.

Concept Relevance Propagation (Achtibat et al., "From attribution maps to human-understandable
explanations through Concept Relevance Propagation", Nature Machine Intelligence 2023): LRP is
run down to a layer ``L``; there the relevance ``R_L`` (C, h, w) is masked to the channels of one
concept ``theta`` and propagated on to the input, giving the concept's conditional heatmap
``R(x | theta)``. Every LRP rule is linear in the relevance it receives, so the conditional
heatmaps of disjoint concepts that cover all channels sum to the unconditional heatmap.

Batched: the image is replicated ``n`` times in one forward pass, row ``i`` carrying concept
``i``'s mask; one backward pass gives ``n`` conditional heatmaps (zennit-crp runs one backward pass
per concept). The mask is applied by a custom autograd function at the layer's output, placed
through :func:`convscope.core.hooks.capture`'s ``replace``; it is the identity in the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from convscope.core.hooks import capture
from convscope.methods.attribution.lrp import initial_relevance, lrp_rules
from convscope.models.outputs import unwrap
from convscope.models.preprocessing import Preprocessing

__all__ = ["conditional_relevance", "layer_relevance", "relevance_passes"]

Scores = Callable[[torch.Tensor], torch.Tensor]


class _KeepChannels(torch.autograd.Function):
    """Identity forward; backward multiplies the relevance by a (n, C, 1, 1) channel mask."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None


@contextmanager
def relevance_passes(model: nn.Module, layer: str, scores: Scores, *, composite: str = "epsilon_plus_flat",
                     preprocessing: Preprocessing | None = None, channels: int = 3, to_input: bool = True,
                     **rules: Any) -> Iterator[Callable[[torch.Tensor], dict[str, Any]]]:
    """A block in which ``run(x)`` is :func:`layer_relevance` of ``x``, the LRP rules registered once
    for all the block's passes (for a data set in batches). ``to_input=False`` stops the backward pass
    at the layer (``"input"`` is then ``None``): the layers below it are not back-propagated."""
    with lrp_rules(unwrap(model), composite, preprocessing=preprocessing, channels=channels,
                   **rules) as setup, capture(model, layer) as cap:

        def run(x: torch.Tensor) -> dict[str, Any]:
            cap.reset()
            xb = x.detach().requires_grad_(True)
            out = setup.forward(model, xb)
            a = cap.activation(layer)
            start = initial_relevance(out, scores(out))
            if to_input:
                r_layer, r_in = torch.autograd.grad(out, (a, xb), grad_outputs=start)
            else:
                (r_layer,), r_in = torch.autograd.grad(out, (a,), grad_outputs=start), None
            return {"input": None if r_in is None else r_in.detach(), "layer": r_layer.detach(),
                    "activation": a.detach(), "logits": out.detach(), "score": start.sum(1),
                    "lrp": setup.info()}

        yield run


def layer_relevance(model: nn.Module, x: torch.Tensor, layer: str, scores: Scores, *,
                    composite: str = "epsilon_plus_flat", preprocessing: Preprocessing | None = None,
                    **rules: Any) -> dict[str, Any]:
    """Unconditional LRP of ``x`` down to the input, with the relevance and activation at ``layer``.

    Args:
        model: the model (a :class:`~convscope.models.outputs.ScoresModel` or the network).
        x: (B, C, H, W) model-space inputs.
        layer: the dotted name of the layer.
        scores: ``scores(out) -> (B,)``: the explained score of each image from the outputs.
        composite, preprocessing, **rules: as for :func:`convscope.methods.attribution.lrp.lrp_rules`.

    Returns:
        ``{"input": (B, C, H, W) input relevance, "layer": (B, C_L, h, w) relevance at the layer's
        output, "activation": (B, C_L, h, w) the layer's output, "logits": (B, K),
        "score": (B,) the explained scores, "lrp": the setup record}``.
    """
    with relevance_passes(model, layer, scores, composite=composite, preprocessing=preprocessing,
                          channels=x.shape[1], **rules) as run:
        return run(x)


def conditional_relevance(model: nn.Module, x: torch.Tensor, layer: str, scores: Scores,
                          masks: Sequence[torch.Tensor] | torch.Tensor, *, batch_size: int = 16,
                          composite: str = "epsilon_plus_flat", preprocessing: Preprocessing | None = None,
                          **rules: Any) -> torch.Tensor:
    """Conditional heatmaps of one image for several concepts, ``batch_size`` concepts per pass.

    Args:
        model: the model (a :class:`~convscope.models.outputs.ScoresModel` or the network).
        x: (1, C, H, W) the model-space image.
        layer: the dotted name of the layer the concepts live in.
        scores: ``scores(out) -> (n,)`` the explained score of each row.
        masks: (k, C_L) channel masks (1 for a concept's channels, 0 elsewhere).
        batch_size: concepts (copies of the image) per forward and backward pass.
        composite, preprocessing, **rules: as for :func:`convscope.methods.attribution.lrp.lrp_rules`.

    Returns:
        (k, C, H, W): the input relevance of each concept.
    """
    m = torch.as_tensor(masks if isinstance(masks, torch.Tensor) else torch.stack(list(masks)))
    m = m.to(x.device, x.dtype)
    holder: dict[str, torch.Tensor] = {}

    def gate(o: torch.Tensor) -> torch.Tensor:
        mask = holder["mask"].view(o.shape[0], o.shape[1], *([1] * (o.ndim - 2)))
        return _KeepChannels.apply(o, mask)

    outs = []
    with lrp_rules(unwrap(model), composite, preprocessing=preprocessing, channels=x.shape[1],
                   **rules) as setup, capture(model, layer, replace={layer: gate}):
        for i in range(0, m.shape[0], batch_size):
            chunk = m[i:i + batch_size]
            holder["mask"] = chunk
            xb = x[:1].detach().expand(chunk.shape[0], *x.shape[1:]).clone().requires_grad_(True)
            out = setup.forward(model, xb)
            start = initial_relevance(out, scores(out))
            (r,) = torch.autograd.grad(out, xb, grad_outputs=start)
            outs.append(r.detach())
    return torch.cat(outs)
