"""Which parts of a vision transformer the attention methods need, and which tokens are patches.

:func:`vit_parts` recognises the known families (torchvision, timm, Hugging Face) and reads their
patch size, fixed input size, blocks, prefix-token count and final norm + head.

:func:`token_grid` finds the patch grid of ``N`` tokens for an ``H x W`` input: with a known patch
size ``p`` (torchvision ``patch_size``, timm ``patch_embed.patch_size``, Hugging Face
``config.patch_size``) the grid is ``(H / p, W / p)`` and the rest, at the front, are prefix tokens
(class, distillation, registers); without one, the fewest prefix tokens that leave a grid with one
common stride dividing ``H`` and ``W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.core.errors import MethodError
from convscope.models.outputs import unwrap

__all__ = ["ViTParts", "token_grid", "vit_parts"]


@dataclass(frozen=True)
class ViTParts:
    """The parts of a known ViT family that the methods need beyond the attention maps.

    Attributes:
        family: ``"torchvision"``, ``"timm"``, ``"hf"`` or ``"unknown"``.
        patch: the patch size (h, w), or ``None`` if unknown.
        image_size: the input size the model insists on (h, w), or ``None`` if it takes any tiling.
        blocks: dotted names of the transformer blocks, in order ([] if unknown).
        prefix: how many prefix tokens the model says it has (``None``: inferred from the tokens).
        head: ``tokens (B, N, C) -> logits``: the final norm, mean over tokens, the classifier
            (LeGrad's per-layer score, as TorchCAM 0.5.0 defines it); ``None`` if unknown.
    """

    family: str
    patch: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None
    blocks: tuple[str, ...] = ()
    prefix: int | None = None
    head: Any = None


def _pair(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def _children_names(model: nn.Module, path: str) -> tuple[str, ...]:
    parent = model.get_submodule(path)
    return tuple(f"{path}.{n}" for n, _ in parent.named_children())


def vit_parts(model: nn.Module) -> ViTParts:
    """Recognise torchvision ``VisionTransformer``, timm ``VisionTransformer`` (incl. DeiT
    distilled, register tokens) and Hugging Face ``ViTForImageClassification``-type models."""
    from torchvision.models import VisionTransformer as TvViT

    inner = unwrap(model)
    at = next((n for n, m in model.named_modules() if m is inner), "")
    prefix = f"{at}." if at else ""  # a scores wrapper adds no name of its own
    if isinstance(inner, TvViT):
        norm, heads = inner.encoder.ln, inner.heads
        return ViTParts("torchvision", _pair(inner.patch_size), _pair(inner.image_size),
                        tuple(prefix + n for n in _children_names(inner, "encoder.layers")), 1,
                        lambda t: heads(norm(t.mean(1))))
    pe = getattr(inner, "patch_embed", None)
    if pe is not None and hasattr(inner, "blocks") and hasattr(inner, "num_prefix_tokens"):
        strict = getattr(pe, "strict_img_size", False) and not getattr(pe, "dynamic_img_pad", False)
        strict = strict and not getattr(inner, "dynamic_img_size", False)
        size = _pair(getattr(pe, "img_size", None)) if strict else None
        dist = getattr(inner, "head_dist", None)

        def timm_head(t: torch.Tensor) -> torch.Tensor:
            pooled = inner.head_drop(inner.fc_norm(inner.norm(t.mean(1))))
            return inner.head(pooled) if dist is None else (inner.head(pooled) + dist(pooled)) / 2

        return ViTParts("timm", _pair(getattr(pe, "patch_size", None)), size,
                        tuple(prefix + n for n in _children_names(inner, "blocks")),
                        int(inner.num_prefix_tokens), timm_head)
    cfg = getattr(inner, "config", None)
    if cfg is not None and getattr(cfg, "patch_size", None) is not None:
        blocks: tuple[str, ...] = ()
        for n, m in inner.named_modules():
            if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] in ("layers", "layer") and len(m):
                blocks = tuple(prefix + c for c in _children_names(inner, n))
                break
        base = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
        norm = getattr(base, "layernorm", None)
        cls = getattr(inner, "classifier", None)
        head = None
        if isinstance(norm, nn.Module) and isinstance(cls, nn.Linear):
            head = lambda t: cls(norm(t.mean(1)))  # noqa: E731
        size = None if getattr(cfg, "image_size", None) is None else _pair(cfg.image_size)
        return ViTParts("hf", _pair(cfg.patch_size), size, blocks, None, head)
    return ViTParts("unknown")


def token_grid(n: int, size: tuple[int, int], parts: ViTParts) -> tuple[int, int, int, str]:
    """(prefix tokens, grid h, grid w, how it was found) for ``n`` tokens of an ``size`` input.

    Raises:
        MethodError: no grid of patches tiles the input with ``n`` tokens or fewer.
    """
    H, W = size
    if parts.patch is not None:
        gh, gw = H // parts.patch[0], W // parts.patch[1]
        pre = n - gh * gw
        if pre >= 0 and (parts.prefix is None or pre == parts.prefix):
            return pre, gh, gw, f"patch size {parts.patch[0]}x{parts.patch[1]} of the {parts.family} model"
    for pre in range(0, min(n, 64)):
        m = n - pre
        for gh in range(1, math.isqrt(m) + 1):
            for hh, ww in ((gh, m // gh), (m // gh, gh)):
                if hh * ww == m and H % hh == 0 and W % ww == 0 and H // hh == W // ww:
                    how = f"inferred: {pre} leading token(s) leave a {hh}x{ww} grid of stride {H // hh}"
                    return pre, hh, ww, how
    raise MethodError(
        f"cannot read {n} attention tokens as a patch grid of a {H}x{W} input; attention methods need "
        "a ViT whose patches tile the image (use an input size that is a multiple of the patch size)"
    )
