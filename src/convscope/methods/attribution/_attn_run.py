"""The pass every attention method shares: run the model with its attention captured, find the
token layout, run the method per chunk and wrap the result (see :mod:`.attention`).

Chunks: ``eval_batch_size`` images per pass, by default the facade's ``batch_size``; ``"auto"``
sizes them to a memory budget with :func:`convscope.engines.perturb.auto_batch_size` (the one
mechanism every method uses), counting the attention maps the capture keeps and, for the
gradient methods, the autograd graph, measured on one probe image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convscope.core.errors import MethodError
from convscope.core.hooks import capture
from convscope.core.targets import ResolvedTarget
from convscope.engines.perturb import auto_batch_size
from convscope.methods.attribution._attn_capture import attention_capture, attention_grads
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._vit_parts import ViTParts, token_grid, vit_parts

__all__ = ["Pass", "attention_layers", "attention_method", "chunk_size", "fuse", "patches", "query_row",
           "read", "run_pass"]


@dataclass
class Pass:
    """One chunk's forward pass: outputs, attention maps, block outputs and the token layout."""

    out: torch.Tensor
    maps: list[torch.Tensor]
    blocks: list[torch.Tensor]
    target: ResolvedTarget
    prefix: int
    grid: tuple[int, int]
    how: str
    switched: list[str]
    sources: list[torch.Tensor]
    capture: str = "hooks"
    modules: int = 0

    def grads(self, score: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """d ``score.sum()`` / d map for every map (:func:`._attn_capture.attention_grads`)."""
        return attention_grads(score, self.maps, self.sources, retain_graph)


def _check_size(parts: ViTParts, size: tuple[int, int]) -> None:
    if parts.image_size is not None and tuple(size) != parts.image_size:
        raise MethodError(
            f"this {parts.family} ViT takes {parts.image_size[0]}x{parts.image_size[1]} inputs and got "
            f"{size[0]}x{size[1]}; resize the images to {parts.image_size[0]}x{parts.image_size[1]}"
        )
    if parts.patch is not None and (size[0] % parts.patch[0] or size[1] % parts.patch[1]):
        raise MethodError(
            f"a {size[0]}x{size[1]} input cannot be tiled by {parts.patch[0]}x{parts.patch[1]} patches; "
            f"resize it to a multiple of {parts.patch[0]}"
        )


def attention_layers(model: torch.nn.Module) -> list[str]:
    """Names of the model's attention modules (``nn.MultiheadAttention`` or a class named
    ``...Attention``): empty for a CNN, which the attention methods do not explain."""
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.MultiheadAttention) or type(m).__name__.endswith("Attention")]


def _no_attention(model: torch.nn.Module) -> MethodError:
    names = attention_layers(model)
    if names:
        return MethodError(
            f"{type(model).__name__} has attention layers ({names[0]}, ...) but convscope could not capture "
            "their probabilities (they call neither F.scaled_dot_product_attention nor "
            "nn.MultiheadAttention); use gradcam on a block's tokens instead"
        )
    return MethodError(
        f"{type(model).__name__} has no attention layers: attention methods explain vision transformers; "
        "for a CNN use gradcam or another CAM method"
    )


def run_pass(ctx: MethodContext, rows: slice, parts: ViTParts, *, need_grad: bool, blocks: bool,
             last: bool = False) -> Pass:
    """Run the model on ``ctx.x[rows]`` with the attention (and, with ``blocks``, the blocks'
    output tokens) captured; with ``need_grad`` the maps are in an autograd graph. With ``last``
    only the last block's attention is needed (read alone where the hooks find one attention
    module per known block; the other blocks keep their fused kernels, except on Hugging Face
    models, whose one shared config runs every block eager)."""
    assert ctx.model is not None
    size = (int(ctx.x.shape[-2]), int(ctx.x.shape[-1]))
    _check_size(parts, size)
    xb = ctx.x[rows].detach()
    if need_grad:
        xb.requires_grad_(True)
    layers = list(parts.blocks) if blocks else None
    last_of = len(parts.blocks) if last and parts.blocks else None
    # the attention capture first: it holds the model for this thread before the block capture
    # puts the model in eval mode and freezes its weights (state another capture would read back)
    with attention_capture(ctx.model, last_of) as att, capture(ctx.model, layers) as cap:
        with torch.set_grad_enabled(need_grad):
            out = ctx.model(xb)
        block_out = [cap.activation(n) for n in parts.blocks] if blocks else []
        maps, sources, switched = list(att.maps), list(att.sources), list(att.switched)
    if not isinstance(out, torch.Tensor):
        raise MethodError(f"the model returned {type(out).__name__}; attention methods need a logits tensor")
    if not maps:
        raise _no_attention(ctx.model)
    b = xb.shape[0]
    if any(m.dim() != 4 or m.shape[0] != b or m.shape[-1] != m.shape[-2] for m in maps):
        raise MethodError(
            "the attention is not global self-attention over the image (windowed, as in Swin, or "
            "cross-attention); raw attention, rollout, chefer and legrad are not defined for it: use "
            "gradcam on the model's tokens"
        )
    n = maps[0].shape[-1]
    if any(m.shape[-1] != n for m in maps):
        raise MethodError("the attention blocks see different token counts (a hierarchical transformer); "
                          "attention methods need one token sequence through all blocks")
    prefix, gh, gw, how = token_grid(n, size, parts)
    with torch.set_grad_enabled(need_grad):
        _, t = ctx.scores(out, rows)
    return Pass(out, maps, block_out, t, prefix, (gh, gw), how, switched, sources, att.how,
                att.modules or len(maps))


def fuse(a: torch.Tensor, how: str) -> torch.Tensor:
    """Fuse the heads of (B, heads, N, N) attention: (B, N, N)."""
    if how == "mean":
        return a.mean(1)
    return a.amax(1) if how == "max" else a.amin(1)


def query_row(r: torch.Tensor, prefix: int) -> torch.Tensor:
    """The row of (B, N, N) relevance a map is read from, (B, N): the class token's (token 0), or the
    mean query row without a class token (``prefix == 0``)."""
    return r[:, 0] if prefix > 0 else r.mean(1)


def patches(v: torch.Tensor, p: Pass) -> torch.Tensor:
    """The patch columns of (B, N) rows as (B, h, w)."""
    return v[:, p.prefix:].reshape(v.shape[0], *p.grid)


def read(r: torch.Tensor, p: Pass) -> torch.Tensor:
    """The class token's row of (B, N, N) relevance (the mean query row without a class token),
    patch columns only, as (B, h, w)."""
    return patches(query_row(r, p.prefix), p)


def chunk_size(ctx: MethodContext, eval_batch_size: int | str | None, need_grad: bool) -> int:
    """Images per pass: ``eval_batch_size``, the facade's ``batch_size`` for ``None``, or for
    ``"auto"`` :func:`~convscope.engines.perturb.auto_batch_size` with one image's cost read from a
    probe pass under the capture: its layer outputs and the attention maps kept, and for the
    gradient methods twice the outputs (the graph and their gradients) and three times the maps
    (the maps, their gradients and the products of the rules)."""
    if eval_batch_size is None:
        return ctx.batch_size
    if eval_batch_size != "auto":
        return int(eval_batch_size)
    assert ctx.model is not None
    with attention_capture(ctx.model) as att:
        def cost(leaves: int) -> int:
            kept = sum(m.numel() * m.element_size() for m in att.maps)
            return 2 * leaves + 3 * kept if need_grad else leaves + kept

        return auto_batch_size(ctx.model, ctx.x[:1], limit=ctx.x.shape[0], cost=cost)


def attention_method(ctx: MethodContext, per_chunk: Any, *, need_grad: bool, blocks: bool = False,
                     parts: ViTParts | None = None, normalize: str = "auto", last: bool = False,
                     eval_batch_size: int | str | None = None, **diag: Any) -> MethodOutput:
    """Run ``per_chunk(pass) -> (b, h, w)`` on every chunk of :func:`chunk_size` images and wrap
    the result."""
    assert ctx.model is not None
    parts = vit_parts(ctx.model) if parts is None else parts
    bs = min(chunk_size(ctx, eval_batch_size, need_grad), ctx.x.shape[0])  # the chunk used, as reported
    maps, logits, targets = [], [], []
    p: Pass | None = None
    for start in range(0, ctx.x.shape[0], bs):
        rows = slice(start, min(start + bs, ctx.x.shape[0]))
        p = run_pass(ctx, rows, parts, need_grad=need_grad, blocks=blocks, last=last)
        with torch.set_grad_enabled(need_grad):  # also inside a caller's no_grad block
            maps.append(per_chunk(p).detach().float())
        logits.append(p.out.detach())
        targets.extend(p.target.labels() or [None] * p.out.shape[0])
    assert p is not None
    diagnostics = {
        "architecture": parts.family, "prefix_tokens": p.prefix, "patch_grid": list(p.grid),
        "grid_from": p.how, "attention_blocks": p.modules, "switched_for_the_call": p.switched,
        "attention_capture": p.capture, "eval_batch_size": bs,
        "read_from": "the class token (token 0)" if p.prefix
        else "the mean over all query tokens (no class token)",
        **diag,
    }
    if p.how.startswith("inferred"):  # no patch size known: the grid is convscope's reading
        diagnostics["assumed"] = f"prefix tokens and patch grid {p.how}"
    return MethodOutput(map=torch.cat(maps), targets=targets, logits=torch.cat(logits),
                        diagnostics=diagnostics, normalize=normalize)


