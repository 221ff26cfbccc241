"""Explanations made for attention: raw attention, rollout, Chefer's rule and LeGrad.

Every method reads the attention probabilities ``A_l`` (B, heads, N, N) of the ``L`` transformer
blocks, captured by :func:`~convscope.methods.attribution._attn_capture.attention_capture` without any
change to the model (hooks on the attention modules of torchvision, timm and Hugging Face ViTs, a
function mode for other models; hooks removed and flags restored after), in chunks of
``eval_batch_size`` images (:mod:`._attn_run`). ``N = p + h w`` tokens: ``p`` prefix tokens (class,
distillation, registers), dropped from every map and recorded in ``diagnostics["prefix_tokens"]``,
then an ``h x w`` patch grid (inferred from the patch size, non-square inputs included). The maps
are (B, h, w); the facade upsamples them to the input size. The class token is token 0; a model
without one (``p = 0``) is read through the mean over all query tokens, the pooling such models use.

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

import torch

from convscope.core.errors import MethodError
from convscope.core.targets import select_scores
from convscope.core.validate import ints, reals
from convscope.methods.attribution._attn_capture import attention_grads, calls_attention_kernel
from convscope.methods.attribution._attn_run import (
    Pass,
    attention_layers,
    attention_method,
    fuse,
    patches,
    query_row,
    read,
)
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._engine import ENGINE_CHOICES, ENGINE_RANGES
from convscope.methods.attribution._vit_parts import vit_parts
from convscope.methods.registry import CueClaim, register, requirement

__all__ = ["attention_layers", "chefer", "has_attention", "legrad", "raw_attention", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")
#: the chunking option every attention method has (``None``: the facade's ``batch_size``; ``"auto"``:
#: a memory budget), with the perturbation methods' declared values
_BATCH = {"eval_batch_size": None}
_BATCH_RANGES = {"eval_batch_size": ENGINE_RANGES["eval_batch_size"]}
_BATCH_CHOICES = {"eval_batch_size": ENGINE_CHOICES["eval_batch_size"]}


def _cue(measured: float, *, at_least: float | None = None, at_most: float | None = None,
         clean_below: float | None = None, note: str = "") -> CueClaim:
    """An attention method's planted-cue claim: 200 cue digits on ``digits-vit-cue``, and on its clean
    control ``digits-vit`` (the same ViT trained without the cue) where ``clean_below`` is given."""
    return CueClaim(n=200, at_least=at_least, at_most=at_most, clean_below=clean_below, measured=measured,
                    note=note, model="digits-vit-cue", clean_model="digits-vit")


def has_attention(model: torch.nn.Module) -> bool:
    """Whether the attention methods may apply: the model has attention modules
    (:func:`attention_layers`) or its code calls a kernel the capture reads
    (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``; read from its bytecode, nothing
    runs). ``False`` means certainly nothing to capture (a CNN, whatever its parameters' shapes); a
    model that passes and computes no capturable attention is refused by the capture, in one line."""
    return bool(attention_layers(model)) or calls_attention_kernel(model)


requirement("attention", has_attention,
            "has no attention layers and calls neither F.scaled_dot_product_attention nor "
            "nn.MultiheadAttention: attention methods explain vision transformers; "
            "for a CNN use gradcam or another CAM method")


_SUPPORTED = ("torchvision VisionTransformer, timm ViT/DeiT (distillation, register tokens), Hugging Face "
              "ViTForImageClassification (hf:); not Swin (windowed attention)")


@register(
    "raw_attention", family="attention", requires="attention", needs_gradients=False,
    options={"head_fusion": "mean", **_BATCH}, choices={"head_fusion": HEAD_FUSIONS, **_BATCH_CHOICES},
    ranges=_BATCH_RANGES,
    summary="where the class token looks in the last transformer block (its attention, heads fused)",
    caveats="class-agnostic (the same map for every target); attention is not relevance: it ignores the "
    "values, the MLPs and the earlier blocks. " + _SUPPORTED,
    reference="Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (attention maps)",
    claims=(_cue(0.645, at_most=0.8, clean_below=0.2,
                 note="class-agnostic: the last block's class-token attention settles on the cue for only "
                 "about two digits in three (clean ViT 0.065)"),),
)
def raw_attention(ctx: MethodContext, head_fusion: str = "mean",
                  eval_batch_size: int | str | None = None) -> MethodOutput:
    """The class token's attention in the last block (only that block's attention is read: the
    others keep their fused kernels where the capture hooks one attention module per block; on
    Hugging Face models the eager switch is the config every block shares, so all run eager).

    Args:
        head_fusion: how the heads of a block are fused: ``"mean"``, ``"max"`` or ``"min"``.
        eval_batch_size: images per forward pass (default: explain's ``batch_size``); ``"auto"``: as many
            as a memory budget holds (one probe image's layer outputs and attention maps).

    Shape:
        map (B, h, w) on the patch grid.
    """
    with torch.no_grad():
        return attention_method(ctx, lambda p: read(fuse(p.maps[-1], head_fusion), p), need_grad=False,
                                last=True, eval_batch_size=eval_batch_size, head_fusion=head_fusion,
                                class_agnostic=True)


def _rollout_steps(maps: list[torch.Tensor], head_fusion: str, discard_ratio: float) -> list[torch.Tensor]:
    """Each block's ``Ã_l = norm_rows(0.5 fuse(A_l) + 0.5 I)`` (B, N, N); with ``discard_ratio`` the
    smallest that share of each sample's fused weights is set to zero first (entry (0, 0) kept)."""
    b, n = maps[0].shape[0], maps[0].shape[-1]
    out = []
    for a in maps:
        f = fuse(a, head_fusion)
        k = int(n * n * discard_ratio)
        if k:
            flat = f.reshape(b, -1).clone()
            idx = flat.topk(k, dim=1, largest=False).indices
            keep0 = flat[:, 0].clone()
            flat.scatter_(1, idx, 0.0)
            flat[:, 0] = keep0
            f = flat.reshape(b, n, n)
        t = f.mul_(0.5)  # _fuse and the discard return a fresh tensor: changed in place
        t.diagonal(dim1=-2, dim2=-1).add_(0.5)
        out.append(t.div_(t.sum(-1, keepdim=True).clamp_(min=1e-12)))
    return out


def _rollout_read(p: Pass, head_fusion: str, discard_ratio: float) -> torch.Tensor:
    """Attention rollout ``R = Ã_L ... Ã_1``, read as :func:`._attn_run.read` reads a relevance matrix, but
    computed as a row vector times matrices from the last block down: ``v = row(Ã_L)``,
    ``v = v Ã_l`` (B N^2 per block instead of the B N^3 of the matrix product)."""
    steps = _rollout_steps(p.maps, head_fusion, discard_ratio)
    v = query_row(steps[-1], p.prefix)
    for t in reversed(steps[:-1]):
        v = torch.bmm(v[:, None], t)[:, 0]
    return patches(v, p)


@register(
    "rollout", family="attention", requires="attention", needs_gradients=False,
    options={"head_fusion": "mean", "discard_ratio": 0.0, **_BATCH},
    choices={"head_fusion": HEAD_FUSIONS, **_BATCH_CHOICES},
    ranges={"discard_ratio": reals(0.0, 1.0, hi_open=True), **_BATCH_RANGES},
    summary="attention rolled out through all blocks with the residual connection (0.5 A + 0.5 I): how "
    "much each patch flows into the class token",
    caveats="class-agnostic (the same map for every target); spreads over the image in deep models. "
    + _SUPPORTED,
    reference="Abnar and Zuidema 2020, Quantifying Attention Flow in Transformers",
    claims=(_cue(1.0, at_least=0.9, clean_below=0.2,
                 note="class-agnostic, but this model's attention flows from the cue (clean ViT 0.05)"),),
)
def rollout(ctx: MethodContext, head_fusion: str = "mean", discard_ratio: float = 0.0,
            eval_batch_size: int | str | None = None) -> MethodOutput:
    """Attention rollout.

    Args:
        head_fusion: how the heads of a block are fused: ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: share of each block's smallest fused attention weights set to zero before the
            rollout (0 keeps all).
        eval_batch_size: images per forward pass (default: explain's ``batch_size``); ``"auto"``: as many
            as a memory budget holds (one probe image's layer outputs and attention maps).

    Shape:
        map (B, h, w) on the patch grid.
    """
    with torch.no_grad():
        return attention_method(
            ctx, lambda p: _rollout_read(p, head_fusion, discard_ratio), need_grad=False,
            eval_batch_size=eval_batch_size,
            normalize="minmax",  # the residual identity puts every patch on a large common offset
            head_fusion=head_fusion, discard_ratio=discard_ratio, class_agnostic=True)


def chefer_matrix(maps: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s relevance ``R`` (B, N, N): ``R = I``; ``R += mean_h((G * A)^+) @ R`` per block."""
    b, n = maps[0].shape[0], maps[0].shape[-1]
    r = torch.eye(n, dtype=maps[0].dtype, device=maps[0].device).expand(b, n, n)
    for a, g in zip(maps, grads, strict=True):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    return r


def _chefer_chunk(p: Pass) -> torch.Tensor:
    grads = p.grads(select_scores(p.out, p.target))
    return read(chefer_matrix([a.detach() for a in p.maps], grads), p)


@register(
    "chefer", family="attention", requires="attention", options=dict(_BATCH), choices=_BATCH_CHOICES,
    ranges=_BATCH_RANGES,
    summary="gradient-weighted attention rolled out through all blocks (relevance of each patch to the "
    "target class through the class token)",
    caveats=_SUPPORTED,
    reference="Chefer, Gur and Wolf 2021, Generic Attention-model Explainability for Interpreting "
    "Bi-Modal and Encoder-Decoder Transformers",
    claims=(_cue(0.87, at_least=0.8, clean_below=0.15, note="clean ViT 0.005; see docs/methods.md"),),
)
def chefer(ctx: MethodContext, eval_batch_size: int | str | None = None) -> MethodOutput:
    """Chefer et al.'s gradient-weighted rollout (encoder-only rule).

    Args:
        eval_batch_size: images per forward pass (default: explain's ``batch_size``); ``"auto"``: as many
            as a memory budget holds (one probe image's layer outputs and attention maps).

    Shape:
        map (B, h, w) on the patch grid.
    """
    return attention_method(ctx, _chefer_chunk, need_grad=True, eval_batch_size=eval_batch_size)


@register(
    "legrad", family="attention", requires="attention",
    options={"blocks": None, **_BATCH}, ranges={"blocks": ints(1, None), **_BATCH_RANGES},
    choices=_BATCH_CHOICES,
    summary="positive gradients of each block's own class score with respect to that block's attention, "
    "averaged over blocks, heads and queries",
    caveats="needs the model's final norm and classifier: torchvision, timm and Hugging Face ViTs; "
    "not Swin (windowed attention)",
    reference="Bousselham et al. 2024, LeGrad: An Explainability Method for Vision Transformers via "
    "Feature Formation Sensitivity",
    claims=(_cue(0.985, at_least=0.9, clean_below=0.25, note="clean ViT 0.125; see docs/methods.md"),),
)
def legrad(ctx: MethodContext, blocks: int | None = None,
           eval_batch_size: int | str | None = None) -> MethodOutput:
    """LeGrad, as TorchCAM 0.5.0 computes it.

    Args:
        blocks: use the last ``blocks`` transformer blocks; ``None`` (default): all of them.
        eval_batch_size: images per forward pass (default: explain's ``batch_size``); ``"auto"``: as many
            as a memory budget holds (one probe image's layer outputs and attention maps).

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

    def chunk(p: Pass) -> torch.Tensor:
        if len(p.maps) != len(p.blocks):
            raise MethodError(f"{len(p.maps)} attention calls for {len(p.blocks)} blocks; legrad needs one "
                              "attention per block")
        rel = []
        for a, src, z in list(zip(p.maps, p.sources, p.blocks, strict=True))[-use:]:
            try:
                logits = parts.head(z)
            except RuntimeError as exc:  # e.g. a head over [class token, mean patch] (DINOv2)
                name = type(ctx.model).__name__
                raise MethodError(f"legrad cannot apply {name}'s final norm and head to the mean of a "
                                  f"block's tokens ({str(exc).splitlines()[0]}); use chefer") from None
            s = select_scores(logits, p.target)
            (g,) = attention_grads(s, [a], [src], retain_graph=True)
            rel.append(g.clamp(min=0).mean((1, 2))[:, p.prefix:])
        return torch.stack(rel).mean(0).reshape(-1, *p.grid)

    return attention_method(ctx, chunk, need_grad=True, blocks=True, parts=parts, blocks_used=use,
                            eval_batch_size=eval_batch_size)
