"""The fallback capture: a :class:`torch.overrides.TorchFunctionMode` for one call.

Used by :func:`~convscope.methods.attribution._attn_capture.attention_capture` for models whose
attention no module hook reads (a model that calls ``F.scaled_dot_product_attention`` or
``F.multi_head_attention_forward`` from its own code). Inside the mode every fused attention kernel
the model calls is replaced by the same computation done step by step, and the probabilities it
computes are kept:

* ``F.scaled_dot_product_attention`` becomes ``P = softmax(q k^T * scale + mask)``, ``out = P v``;
* ``F.multi_head_attention_forward`` becomes the in-projection, the same step-by-step attention
  and the out-projection, and returns the weights only where the caller asked for them.

``P`` is the tensor that multiplies ``v``, so gradients of any score with respect to it are the
ones Chefer et al. and LeGrad use. Nothing in ``torch`` is patched: the mode is popped on exit
and other threads never see it. Any function mode turns off PyTorch's native
``nn.MultiheadAttention`` fast path and costs a Python call per torch function: the hooks of
:mod:`._attn_capture` are preferred wherever they apply.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from convscope.core.errors import MethodError

__all__ = ["AttentionMode", "mha_refusal"]

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS: tuple[Any, ...] = (None, None, None, None, 0.0, False, None, False)
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias",
             "training", "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight",
             "q_proj_weight", "k_proj_weight", "v_proj_weight", "static_k", "static_v",
             "average_attn_weights", "is_causal")
_MHA_DEFAULTS: tuple[Any, ...] = (None,) * 13 + (True, None, True, None, False, None, None, None, None,
                                                  None, True, False)



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


def mha_refusal(*, cross: bool, bias_kv: bool, zero_attn: bool, padding: bool, separate: bool = False,
                static: bool = False) -> str | None:
    """The one-line refusal of an ``nn.MultiheadAttention`` call whose attention is not a ViT's
    self-attention over the tokens (``None`` when it is)."""
    odd = [what for what, bad in (
        ("cross-attention (key or value is not the query)", cross), ("bias_k/bias_v", bias_kv),
        ("add_zero_attn", zero_attn), ("a key_padding_mask", padding),
        ("separate q/k/v projections", separate), ("static keys or values", static)) if bad]
    if not odd:
        return None
    return (f"cannot capture the attention of an nn.MultiheadAttention with {odd[0]}; attention methods "
            "support self-attention as in ViTs")


class AttentionMode(TorchFunctionMode):
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
        why = mha_refusal(cross=a["key"] is not q_in or a["value"] is not q_in,
                          bias_kv=a["bias_k"] is not None or a["bias_v"] is not None,
                          zero_attn=bool(a["add_zero_attn"]), padding=a["key_padding_mask"] is not None,
                          separate=bool(a["use_separate_proj_weight"]),
                          static=a["static_k"] is not None or a["static_v"] is not None)
        if why:
            raise MethodError(why)
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


