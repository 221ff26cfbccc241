"""Shared test helpers (importable as ``helpers``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch
from torch import nn

from convscope.core.hooks import count_hooks


def model_state(net: nn.Module) -> dict:
    """Everything a method could leave changed on a module: each parameter's and buffer's
    identity, storage, strides (memory format) and values, ``requires_grad``, training flags,
    hooks and module attributes."""
    tensors = {f"p:{n}": p for n, p in net.named_parameters()}
    tensors.update({f"b:{n}": b for n, b in net.named_buffers()})
    return {
        "tensors": {k: (id(t), t.data_ptr(), t.stride(), t.detach().clone()) for k, t in tensors.items()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "training": {n: m.training for n, m in net.named_modules()},
        "hooks": count_hooks(net),
        "attrs": {n: sorted(vars(m)) for n, m in net.named_modules()},
    }


def assert_same_state(a: dict, b: dict) -> None:
    """Two :func:`model_state` snapshots agree (assertion messages name what changed)."""
    assert a["requires_grad"] == b["requires_grad"]
    assert a["training"] == b["training"]
    assert a["hooks"] == b["hooks"]
    assert a["attrs"] == b["attrs"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for k, (ida, ptra, sta, va) in a["tensors"].items():
        idb, ptrb, stb, vb = b["tensors"][k]
        assert (ida, ptra, sta) == (idb, ptrb, stb), f"{k} changed (identity, storage or memory format)"
        assert torch.equal(va, vb), f"{k} changed value"
