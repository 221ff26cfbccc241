"""Capture the attention probabilities of a vision transformer without touching its code.

:func:`attention_capture` is a context manager for one call. Inside it a
:class:`torch.overrides.TorchFunctionMode` replaces every fused attention kernel the model calls
by the same computation done step by step, and keeps the probabilities it computes:

* ``F.scaled_dot_product_attention`` (timm's fused path, Hugging Face's ``"sdpa"``
  implementation, any model written with it) becomes ``P = softmax(q k^T * scale + mask)``,
  ``out = P v``;
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, e.g. torchvision's
  ``VisionTransformer``, which asks for ``need_weights=False``) becomes the in-projection, the same
  step-by-step attention and the out-projection, and returns the weights only where the caller
  asked for them.

``P`` is the tensor that multiplies ``v``, so gradients of any score with respect to it are the
ones Chefer et al. and LeGrad use. Paths that compute attention with an explicit softmax instead
of a kernel (timm's ``fused_attn=False``, Hugging Face's ``"eager"``) are switched to the kernel
call for the block, so every model goes through the one capture above and gives the same maps
whichever path its owner chose: timm ``Attention.fused_attn`` is set to ``True`` and a Hugging
Face ``config._attn_implementation`` to ``"sdpa"``; every flag is put back in ``finally``, errors
included, and what was switched is recorded. No hook is registered and nothing in ``torch`` is
patched: the mode is popped on exit and other threads never see it.

Which tokens are patches. :func:`token_grid` finds the patch grid of ``N`` tokens for an
``H x W`` input: with a known patch size ``p`` (torchvision ``patch_size``, timm
``patch_embed.patch_size``, Hugging Face ``config.patch_size``) the grid is ``(H / p, W / p)`` and
the rest, at the front, are prefix tokens (class, distillation, registers); without one, the
fewest prefix tokens that leave a grid with one common stride dividing ``H`` and ``W``.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convscope.core.errors import MethodError
from convscope.models.outputs import unwrap

__all__ = [
    "AttentionCapture",
    "ViTParts",
    "attention_capture",
    "calls_attention_kernel",
    "token_grid",
    "vit_parts",
]

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS: tuple[Any, ...] = (None, None, None, None, 0.0, False, None, False)
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias",
             "training", "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight",
             "q_proj_weight", "k_proj_weight", "v_proj_weight", "static_k", "static_v",
             "average_attn_weights", "is_causal")
_MHA_DEFAULTS: tuple[Any, ...] = (None,) * 13 + (True, None, True, None, False, None, None, None, None,
                                                  None, True, False)


#: the calls :class:`AttentionCapture` captures, as they appear among a function's names
_KERNEL_NAMES = frozenset({"scaled_dot_product_attention", "multi_head_attention_forward",
                           "MultiheadAttention"})


def _names(fn: types.FunctionType) -> set[str]:
    """The global and attribute names ``fn``'s code (and the code nested in it) uses."""
    out: set[str] = set()
    stack = [fn.__code__]
    while stack:
        code = stack.pop()
        out.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return out


def _reaches_kernel(fn: types.FunctionType, cls: type, seen: set[int], depth: int = 3) -> bool:
    """Whether ``fn`` names an attention kernel, or a method of ``cls`` or a module-level function
    it names does (to ``depth`` calls)."""
    names = _names(fn)
    if names & _KERNEL_NAMES:
        return True
    for name in names:
        for g in (getattr(cls, name, None), fn.__globals__.get(name)):
            if depth and isinstance(g, types.FunctionType) and id(g) not in seen:
                seen.add(id(g))
                if not g.__module__.startswith("torch.nn") and _reaches_kernel(g, cls, seen, depth - 1):
                    return True
    return False


def calls_attention_kernel(model: nn.Module) -> bool:
    """Whether the model's code may call a kernel :class:`AttentionCapture` captures
    (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``): read from the bytecode of each
    module's ``forward`` (``torch.nn``'s own skipped) and of the methods and module-level functions it
    calls, without running it. Code that cannot be read (TorchScript) counts as may call."""
    for cls in {type(m) for m in model.modules()}:
        if issubclass(cls, torch.jit.ScriptModule):
            return True
        fn = getattr(cls, "forward", None)
        if not isinstance(fn, types.FunctionType) or fn.__module__.startswith("torch.nn"):
            continue
        if _reaches_kernel(fn, cls, {id(fn)}):  # per class: ``self.x`` resolves on it
            return True
    return False


def _bind(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...],
          defaults: tuple[Any, ...]) -> dict[str, Any]:
    vals = dict(zip(names, defaults, strict=True))
    vals.update(zip(names, args, strict=False))
    vals.update({k: v for k, v in kwargs.items() if k in vals})
    return vals


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step scaled dot-product attention: (output, probabilities (..., Nq, Nk))."""
    if a["dropout_p"]:
        raise MethodError(
            "attention dropout is active (the model is in training mode?); attention methods need "
            "eval mode with dropout off"
        )
    if a["enable_gqa"] and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    scale = q.shape[-1] ** -0.5 if a["scale"] is None else a["scale"]
    s = (q * scale) @ k.transpose(-2, -1)  # scale the (N, d) queries, not the (N, N) scores
    if a["is_causal"]:
        keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    mask = a["attn_mask"]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    p = s.softmax(-1)
    return p @ v, p


class _AttentionMode(TorchFunctionMode):
    """Replaces fused attention kernels by step-by-step attention and records the probabilities."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        super().__init__()
        self.store = store

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            a = _bind(args, kwargs, _SDPA_ARGS, _SDPA_DEFAULTS)
            out, p = _attend(a["query"], a["key"], a["value"], a)
            self.store.append(p)
            return out
        if func is F.multi_head_attention_forward:
            return self._mha(_bind(args, kwargs, _MHA_ARGS, _MHA_DEFAULTS))
        return func(*args, **kwargs)

    def _mha(self, a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        q_in = a["query"]
        odd = [what for what, bad in (
            ("cross-attention (key or value is not the query)",
             a["key"] is not q_in or a["value"] is not q_in),
            ("bias_k/bias_v", a["bias_k"] is not None or a["bias_v"] is not None),
            ("add_zero_attn", bool(a["add_zero_attn"])),
            ("a key_padding_mask", a["key_padding_mask"] is not None),
            ("separate q/k/v projections", bool(a["use_separate_proj_weight"])),
            ("static keys or values", a["static_k"] is not None or a["static_v"] is not None),
        ) if bad]
        if odd:
            raise MethodError(f"cannot capture the attention of an nn.MultiheadAttention with {odd[0]}; "
                              "attention methods support self-attention as in ViTs")
        unbatched = q_in.dim() == 2
        x = q_in[:, None] if unbatched else q_in  # (L, B, E): the functional form is sequence-first
        n, b, e = x.shape
        h = int(a["num_heads"])
        qkv = F.linear(x, a["in_proj_weight"], a["in_proj_bias"])
        q, k, v = (t.reshape(n, b, h, e // h).permute(1, 2, 0, 3) for t in qkv.chunk(3, -1))
        mask = a["attn_mask"]
        if mask is not None:
            mask = ~mask if mask.dtype == torch.bool else mask  # MHA: True = masked; SDPA: True = kept
            mask = mask.reshape(b, h, n, n) if mask.dim() == 3 else mask
        sd = {"attn_mask": mask, "dropout_p": a["dropout_p"] if a["training"] else 0.0,
              "is_causal": bool(a["is_causal"]) and mask is None, "scale": None, "enable_gqa": False}
        out, p = _attend(q, k, v, sd)
        self.store.append(p)
        out = F.linear(out.permute(2, 0, 1, 3).reshape(n, b, e), a["out_proj_weight"], a["out_proj_bias"])
        weights = None
        if a["need_weights"]:
            weights = p.mean(1) if a["average_attn_weights"] else p
            weights = weights[0] if unbatched else weights
        return (out[:, 0] if unbatched else out), weights


@dataclass
class AttentionCapture:
    """What :func:`attention_capture` yields.

    Attributes:
        maps: the attention probabilities of every attention call of the last forward pass, in
            the order they ran, each (B, heads, N, N).
        switched: what was switched for the call (e.g. ``"blocks.0.attn.fused_attn: False -> True"``).
    """

    maps: list[torch.Tensor] = field(default_factory=list)
    switched: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Forget the maps (call between forward passes)."""
        self.maps.clear()


@contextmanager
def attention_capture(model: nn.Module) -> Iterator[AttentionCapture]:
    """Record the attention probabilities of ``model``'s forward passes inside the block.

    Flags that route attention around a kernel call (timm ``fused_attn``, Hugging Face
    ``config._attn_implementation``) are switched for the block and restored on exit, errors
    included (see the module docstring).
    """
    cap = AttentionCapture()
    flags: list[tuple[Any, str, Any]] = []
    for name, m in model.named_modules():
        if getattr(m, "fused_attn", None) is False:
            flags.append((m, "fused_attn", False))
            cap.switched.append(f"{name}.fused_attn: False -> True")
        cfg = getattr(m, "config", None)
        impl = getattr(cfg, "_attn_implementation", None) if cfg is not None else None
        if impl == "eager" and all(c is not cfg for c, _, _ in flags):
            flags.append((cfg, "_attn_implementation", impl))
            cap.switched.append(f"{name or type(m).__name__}.config._attn_implementation: 'eager' -> 'sdpa'")
    mode = _AttentionMode(cap.maps)
    try:
        for obj, attr, _ in flags:
            setattr(obj, attr, True if attr == "fused_attn" else "sdpa")
        with mode:
            yield cap
    finally:
        for obj, attr, old in flags:
            setattr(obj, attr, old)


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
