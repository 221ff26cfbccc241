"""Explanations made for attention: raw attention, rollout, Chefer's rule and LeGrad.

Every method reads the attention probabilities ``A_l`` (B, heads, N, N) of the ``L`` transformer
blocks, captured by :func:`~convscope.methods.attribution._attn_capture.attention_capture` without any
change to the model (fused kernels are computed step by step inside the call; flags restored
after). ``N = p + h w`` tokens: ``p`` prefix tokens (class, distillation, registers), dropped from
every map and recorded in ``diagnostics["prefix_tokens"]``, then an ``h x w`` patch grid (inferred
from the patch size, non-square inputs included). The maps are (B, h, w); the facade upsamples
them to the input size. The class token is token 0; a model without one (``p = 0``) is read
through the mean over all query tokens, the pooling such models use.

=================== ============================================================================
``raw_attention``   the class token's attention in the last block, fused over heads:
                    ``M = fuse_h(A_L)[0, p:]``. Class-agnostic: the target does not change it.
``rollout``         Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers":
                    ``Ã_l = norm_rows(0.5 fuse_h(A_l) + 0.5 I)``, ``R = Ã_L ... Ã_1``,
                    ``M = R[0, p:]``. ``head_fusion`` mean / max / min; ``discard_ratio``
                    zeroes that share of the smallest fused weights of each block first (the
                    class token's attention to itself is kept), as in the common implementation
                    (J. Gildenblat's vit-explain). Class-agnostic.
``chefer``          Chefer, Gur and Wolf 2021, "Generic Attention-model Explainability for
                    Interpreting Bi-Modal and Encoder-Decoder Transformers", the rule for
                    self-attention encoders: ``R = I``; for each block in order
                    ``Ā_l = mean_h((dS/dA_l * A_l)^+)``, ``R = R + Ā_l R``; ``M = R[0, p:]``,
                    with ``S`` the target score. Class-specific.
``legrad``          Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision
                    Transformers via Feature Formation Sensitivity", in TorchCAM 0.5.0's
                    convention: for each block ``l`` its own score ``s_l = head(norm(mean_tokens
                    (Z_l)))`` (``Z_l`` the block's output tokens, ``norm``/``head`` the model's
                    final norm and classifier), ``M = mean_l mean_{h, queries}
                    (dS_l/dA_l)^+[p:]``. Class-specific. ``blocks`` keeps the last that many.
=================== ============================================================================

Supported: torchvision ``VisionTransformer``, timm ``VisionTransformer`` (DeiT distilled, register
tokens, no class token), Hugging Face ``ViTForImageClassification``-type models (``hf:``) and, for
the three methods that need only the attention, any model whose attention runs through
``F.scaled_dot_product_attention`` or ``nn.MultiheadAttention``. LeGrad needs the final norm and
head, so it supports the three named families. Not defined for windowed attention (Swin): its
attention is over windows, not the image; use Grad-CAM on its tokens instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convscope.core.errors import MethodError
from convscope.core.hooks import capture
from convscope.core.targets import ResolvedTarget, select_scores
from convscope.core.validate import ints, reals
from convscope.methods.attribution._attn_capture import ViTParts, attention_capture, token_grid, vit_parts
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.registry import CueClaim, register

__all__ = ["attention_layers", "inapplicable_methods", "chefer", "legrad", "raw_attention", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")


def _cue(measured: float, *, at_least: float | None = None, at_most: float | None = None,
         note: str = "") -> CueClaim:
    """An attention method's planted-cue claim: 200 cue digits on ``digits-vit-cue`` (no clean ViT)."""
    return CueClaim(n=200, at_least=at_least, at_most=at_most, measured=measured, note=note,
                    model="digits-vit-cue", clean_model=None)


@dataclass
class _Pass:
    """One chunk's forward pass: outputs, attention maps, block outputs and the token layout."""

    out: torch.Tensor
    maps: list[torch.Tensor]
    blocks: list[torch.Tensor]
    target: ResolvedTarget
    prefix: int
    grid: tuple[int, int]
    how: str
    switched: list[str]


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


def inapplicable_methods(model: torch.nn.Module) -> list[str]:
    """The registered methods that do not apply to ``model``: the attention family on a model
    without attention layers (the web app refuses them and greys them out)."""
    from convscope.methods.registry import get_method, method_names

    if attention_layers(model):
        return []
    return [n for n in method_names() if get_method(n).family == "attention"]


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


def _run(ctx: MethodContext, rows: slice, parts: ViTParts, *, need_grad: bool, blocks: bool) -> _Pass:
    """Run the model on ``ctx.x[rows]`` with the attention (and, with ``blocks``, the blocks'
    output tokens) captured; with ``need_grad`` the maps are in an autograd graph."""
    assert ctx.model is not None
    size = (int(ctx.x.shape[-2]), int(ctx.x.shape[-1]))
    _check_size(parts, size)
    xb = ctx.x[rows].detach()
    if need_grad:
        xb.requires_grad_(True)
    layers = list(parts.blocks) if blocks else None
    with capture(ctx.model, layers) as cap, attention_capture(ctx.model) as att:
        with torch.set_grad_enabled(need_grad):
            out = ctx.model(xb)
        block_out = [cap.activation(n) for n in parts.blocks] if blocks else []
        maps, switched = list(att.maps), list(att.switched)
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
    return _Pass(out, maps, block_out, t, prefix, (gh, gw), how, switched)


def _fuse(a: torch.Tensor, how: str) -> torch.Tensor:
    """Fuse the heads of (B, heads, N, N) attention: (B, N, N)."""
    if how == "mean":
        return a.mean(1)
    return a.amax(1) if how == "max" else a.amin(1)


def _read(r: torch.Tensor, p: _Pass) -> torch.Tensor:
    """The class token's row of (B, N, N) relevance (the mean query row without a class token),
    patch columns only, as (B, h, w)."""
    row = r[:, 0] if p.prefix > 0 else r[:, p.prefix:].mean(1)
    return row[:, p.prefix:].reshape(r.shape[0], *p.grid)


def _attention_method(ctx: MethodContext, per_chunk: Any, *, need_grad: bool, blocks: bool = False,
                      parts: ViTParts | None = None, normalize: str = "auto", **diag: Any) -> MethodOutput:
    """Run ``per_chunk(pass) -> (b, h, w)`` on every chunk and wrap the result."""
    assert ctx.model is not None
    parts = vit_parts(ctx.model) if parts is None else parts
    maps, logits, targets = [], [], []
    p: _Pass | None = None
    for rows in ctx.chunks():
        p = _run(ctx, rows, parts, need_grad=need_grad, blocks=blocks)
        with torch.set_grad_enabled(need_grad):  # also inside a caller's no_grad block
            maps.append(per_chunk(p).detach().float())
        logits.append(p.out.detach())
        targets.extend(p.target.labels() or [None] * p.out.shape[0])
    assert p is not None
    diagnostics = {
        "architecture": parts.family, "prefix_tokens": p.prefix, "patch_grid": list(p.grid),
        "grid_from": p.how, "attention_blocks": len(p.maps), "switched_for_the_call": p.switched,
        "read_from": "the class token (token 0)" if p.prefix
        else "the mean over all query tokens (no class token)",
        **diag,
    }
    if p.how.startswith("inferred"):  # no patch size known: the grid is convscope's reading
        diagnostics["assumed"] = f"prefix tokens and patch grid {p.how}"
    return MethodOutput(map=torch.cat(maps), targets=targets, logits=torch.cat(logits),
                        diagnostics=diagnostics, normalize=normalize)


_SUPPORTED = ("torchvision VisionTransformer, timm ViT/DeiT (distillation, register tokens), Hugging Face "
              "ViTForImageClassification (hf:); not Swin (windowed attention)")


@register(
    "raw_attention", family="attention", needs_gradients=False,
    options={"head_fusion": "mean"}, choices={"head_fusion": HEAD_FUSIONS},
    summary="where the class token looks in the last transformer block (its attention, heads fused)",
    caveats="class-agnostic (the same map for every target); attention is not relevance: it ignores the "
    "values, the MLPs and the earlier blocks. " + _SUPPORTED,
    reference="Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (attention maps)",
    claims=(_cue(0.36, at_most=0.5, note="a documented failure: the last block's class-token attention "
                 "is class-agnostic and does not settle on the cue"),),
)
def raw_attention(ctx: MethodContext, head_fusion: str = "mean") -> MethodOutput:
    """The class token's attention in the last block.

    Args:
        head_fusion: how the heads of a block are fused: ``"mean"``, ``"max"`` or ``"min"``.

    Shape:
        map (B, h, w) on the patch grid.
    """
    with torch.no_grad():
        return _attention_method(ctx, lambda p: _read(_fuse(p.maps[-1], head_fusion), p), need_grad=False,
                                 head_fusion=head_fusion, class_agnostic=True)


def rollout_matrix(maps: list[torch.Tensor], head_fusion: str = "mean",
                   discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout ``R = Ã_L ... Ã_1`` of per-block attention (B, heads, N, N): (B, N, N).

    ``Ã_l = norm_rows(0.5 fuse(A_l) + 0.5 I)``; with ``discard_ratio`` the smallest that share of
    each sample's fused weights is set to zero first (entry (0, 0) kept).
    """
    b, n = maps[0].shape[0], maps[0].shape[-1]
    eye = torch.eye(n, dtype=maps[0].dtype, device=maps[0].device)
    r = eye.expand(b, n, n)
    for a in maps:
        f = _fuse(a, head_fusion)
        k = int(n * n * discard_ratio)
        if k:
            flat = f.reshape(b, -1).clone()
            idx = flat.topk(k, dim=1, largest=False).indices
            keep0 = flat[:, 0].clone()
            flat.scatter_(1, idx, 0.0)
            flat[:, 0] = keep0
            f = flat.reshape(b, n, n)
        t = 0.5 * f + 0.5 * eye
        t = t / t.sum(-1, keepdim=True).clamp(min=1e-12)
        r = t @ r
    return r


@register(
    "rollout", family="attention", needs_gradients=False,
    options={"head_fusion": "mean", "discard_ratio": 0.0}, choices={"head_fusion": HEAD_FUSIONS},
    ranges={"discard_ratio": reals(0.0, 1.0, hi_open=True)},
    summary="attention rolled out through all blocks with the residual connection (0.5 A + 0.5 I): how "
    "much each patch flows into the class token",
    caveats="class-agnostic (the same map for every target); spreads over the image in deep models. "
    + _SUPPORTED,
    reference="Abnar and Zuidema 2020, Quantifying Attention Flow in Transformers",
    claims=(_cue(1.0, at_least=0.9, note="class-agnostic, but this model's attention flows from the cue"),),
)
def rollout(ctx: MethodContext, head_fusion: str = "mean", discard_ratio: float = 0.0) -> MethodOutput:
    """Attention rollout.

    Args:
        head_fusion: how the heads of a block are fused: ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: share of each block's smallest fused attention weights set to zero before the
            rollout (0 keeps all).

    Shape:
        map (B, h, w) on the patch grid.
    """
    with torch.no_grad():
        return _attention_method(
            ctx, lambda p: _read(rollout_matrix(p.maps, head_fusion, discard_ratio), p), need_grad=False,
            normalize="minmax",  # the residual identity puts every patch on a large common offset
            head_fusion=head_fusion, discard_ratio=discard_ratio, class_agnostic=True)


def _grads(score: torch.Tensor, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    got = torch.autograd.grad(score.sum(), maps, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for a, g in zip(maps, got, strict=True)]


def chefer_matrix(maps: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s relevance ``R`` (B, N, N): ``R = I``; ``R += mean_h((G * A)^+) @ R`` per block."""
    b, n = maps[0].shape[0], maps[0].shape[-1]
    r = torch.eye(n, dtype=maps[0].dtype, device=maps[0].device).expand(b, n, n)
    for a, g in zip(maps, grads, strict=True):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    return r


def _chefer_chunk(p: _Pass) -> torch.Tensor:
    grads = _grads(select_scores(p.out, p.target), p.maps)
    return _read(chefer_matrix([a.detach() for a in p.maps], grads), p)


@register(
    "chefer", family="attention",
    summary="gradient-weighted attention rolled out through all blocks (relevance of each patch to the "
    "target class through the class token)",
    caveats=_SUPPORTED,
    reference="Chefer, Gur and Wolf 2021, Generic Attention-model Explainability for Interpreting "
    "Bi-Modal and Encoder-Decoder Transformers",
    claims=(_cue(0.775, at_least=0.7, note="below the 0.8 issue #32 asks for; see docs/methods.md"),),
)
def chefer(ctx: MethodContext) -> MethodOutput:
    """Chefer et al.'s gradient-weighted rollout (encoder-only rule).

    Shape:
        map (B, h, w) on the patch grid.
    """
    return _attention_method(ctx, _chefer_chunk, need_grad=True)


@register(
    "legrad", family="attention",
    options={"blocks": None}, ranges={"blocks": ints(1, None)},
    summary="positive gradients of each block's own class score with respect to that block's attention, "
    "averaged over blocks, heads and queries",
    caveats="needs the model's final norm and classifier: torchvision, timm and Hugging Face ViTs; "
    "not Swin (windowed attention)",
    reference="Bousselham et al. 2024, LeGrad: An Explainability Method for Vision Transformers via "
    "Feature Formation Sensitivity",
    claims=(_cue(0.775, at_least=0.7, note="below the 0.8 issue #32 asks for; see docs/methods.md"),),
)
def legrad(ctx: MethodContext, blocks: int | None = None) -> MethodOutput:
    """LeGrad, as TorchCAM 0.5.0 computes it.

    Args:
        blocks: use the last ``blocks`` transformer blocks; ``None`` (default): all of them.

    Shape:
        map (B, h, w) on the patch grid.
    """
    assert ctx.model is not None
    parts = vit_parts(ctx.model)
    if parts.head is None or not parts.blocks:
        raise MethodError(
            f"legrad needs the final norm and classifier of a known ViT family ({_SUPPORTED}); "
            f"{type(ctx.model).__name__} is not one: use chefer or rollout"
        )
    use = len(parts.blocks) if blocks is None else min(int(blocks), len(parts.blocks))

    def chunk(p: _Pass) -> torch.Tensor:
        if len(p.maps) != len(p.blocks):
            raise MethodError(f"{len(p.maps)} attention calls for {len(p.blocks)} blocks; legrad needs one "
                              "attention per block")
        rel = []
        for a, z in list(zip(p.maps, p.blocks, strict=True))[-use:]:
            try:
                logits = parts.head(z)
            except RuntimeError as exc:  # e.g. a head over [class token, mean patch] (DINOv2)
                name = type(ctx.model).__name__
                raise MethodError(f"legrad cannot apply {name}'s final norm and head to the mean of a "
                                  f"block's tokens ({str(exc).splitlines()[0]}); use chefer") from None
            s = select_scores(logits, p.target)
            (g,) = torch.autograd.grad(s.sum(), a, retain_graph=True)
            rel.append(g.clamp(min=0).mean((1, 2))[:, p.prefix:])
        return torch.stack(rel).mean(0).reshape(-1, *p.grid)

    return _attention_method(ctx, chunk, need_grad=True, blocks=True, parts=parts, blocks_used=use)
