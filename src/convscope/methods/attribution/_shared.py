"""Work shared between methods in one pass over one batch: :func:`shared_work`.

Several methods compute the same thing on the same images: every gradient CAM (Grad-CAM,
Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, guided Grad-CAM) the same forward pass with the
layer captured and the same gradient of the target score at that layer; CAM and Eigen-CAM the
same activations; saliency and gradient x input the same input gradient; guided Grad-CAM the
guided gradient of guided backprop; the report, the facade and integrated gradients the same
clean logits. Inside ``with shared_work():`` each of these is computed once and handed to every
method that asks for it again; outside, :func:`shared` just computes (nothing changes).

A value is stored under everything that determines it:

* the model, by identity (the memo holds a reference, so the identity cannot be reused), its
  training flag, and each parameter's and buffer's identity, storage and version counter (an
  in-place weight update, a replaced ``.data``, new BatchNorm statistics or a replaced submodule
  is a new model);
* the input batch, by content: methods get a private copy of the caller's images, so two calls
  on the same images hold equal tensors, never the same one. The first batch with given shape,
  dtype, device and values is kept (a copy, which nothing else can modify) and every later equal
  batch gets its number;
* what the caller adds: what is computed (``"layer_pass"``, ``"input_gradient"``, ...), the rows
  of the batch, the layers, the backward rule, the target spec (:func:`target_key`) and the class
  names it is resolved against.

A callable target is not shared (:func:`target_key` returns ``None``): it may hold state.
Values are treated as read-only by the methods that get them (they build new tensors from them).
The memo lives for the ``with`` block only, in a :class:`contextvars.ContextVar`, so threads and
asynchronous tasks each see their own, and nested blocks share the outermost one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from convscope.core.targets import Contrast, ResolvedTarget
from convscope.models.forward import chunked_outputs

__all__ = ["clean_outputs", "shared", "shared_work", "stored", "target_key"]

T = TypeVar("T")


class _Memo:
    """The values of one shared pass, and the models and inputs their keys refer to."""

    def __init__(self) -> None:
        self.values: dict[Hashable, Any] = {}
        self.models: list[Any] = []
        self.tensors: dict[int, torch.Tensor] = {}  # every parameter and buffer a key names
        self.inputs: list[torch.Tensor] = []
        self.hits = 0
        self.misses = 0

    def model_key(self, model: Any) -> tuple[Hashable, ...]:
        """The model's number in this memo, its training flag, and for each parameter and buffer
        its identity, storage and version: an in-place update, a replaced ``.data``, buffer or
        submodule all make a new key. The tensors are kept, so their identities are not reused."""
        i = next((i for i, m in enumerate(self.models) if m is model), None)
        if i is None:
            self.models.append(model)
            i = len(self.models) - 1
        if not isinstance(model, nn.Module):
            return (i,)
        state = list(model.parameters()) + list(model.buffers())
        self.tensors.update((id(t), t) for t in state)
        return (i, model.training, tuple((id(t), t.data_ptr(), t._version) for t in state))

    def input_key(self, x: torch.Tensor) -> int:
        for i, t in enumerate(self.inputs):
            if t.shape == x.shape and t.dtype == x.dtype and t.device == x.device and torch.equal(t, x):
                return i
        self.inputs.append(x.detach().clone())
        return len(self.inputs) - 1


_MEMO: ContextVar[_Memo | None] = ContextVar("convscope_shared_work", default=None)


@contextmanager
def shared_work() -> Iterator[_Memo]:
    """Share forward and backward passes between the methods run inside the block.

    Yields:
        The memo (``hits`` and ``misses`` count the values reused and computed); a nested block
        yields the outer one's.
    """
    outer = _MEMO.get()
    if outer is not None:
        yield outer
        return
    memo = _Memo()
    token = _MEMO.set(memo)
    try:
        yield memo
    finally:
        _MEMO.reset(token)


def _key(memo: _Memo, model: nn.Module, x: torch.Tensor, parts: tuple[Hashable, ...]) -> Hashable:
    return (memo.model_key(model), memo.input_key(x), *parts)


def shared(
    parts: tuple[Hashable, ...] | None, model: nn.Module, x: torch.Tensor, compute: Callable[[], T],
    *, also: Sequence[tuple[Hashable, ...]] = (),
) -> T:
    """``compute()``, or the value it gave earlier in the same :func:`shared_work` block.

    Args:
        parts: what, besides ``model`` and the input ``x``, determines the value; ``None``: do not
            share (e.g. a callable target).
        model: the network the value is computed with.
        x: the whole input batch (rows, if only some are used, go in ``parts``).
        compute: makes the value; its errors propagate and nothing is stored.
        also: other keys whose values serve as well (e.g. a pass with gradients for a request
            without), tried after ``parts``.
    """
    memo = _MEMO.get()
    if memo is None or parts is None:
        return compute()
    for p in (parts, *also):
        key = _key(memo, model, x, p)
        if key in memo.values:
            memo.hits += 1
            return memo.values[key]  # type: ignore[no-any-return]
    value = compute()
    memo.values[_key(memo, model, x, parts)] = value
    memo.misses += 1
    return value


def stored(parts: tuple[Hashable, ...] | None, model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the open :func:`shared_work` block holds a value under ``parts`` (``False``
    outside a block, or for ``parts=None``)."""
    memo = _MEMO.get()
    return memo is not None and parts is not None and _key(memo, model, x, parts) in memo.values


def target_key(spec: Any, class_names: Sequence[str] = ()) -> Hashable | None:
    """A hashable stand-in for a target spec and the class names it is resolved against, or
    ``None`` for a spec that is not shared (a callable, or an unknown type)."""
    part = _spec_key(spec)
    return None if part is None else (part, tuple(class_names))


def _spec_key(spec: Any) -> Hashable | None:
    if spec is None or isinstance(spec, (bool, int, str, Contrast)):
        return (type(spec).__name__, spec)
    if isinstance(spec, np.integer):
        return ("int", int(spec))
    if isinstance(spec, torch.Tensor):
        return ("tensor", str(spec.dtype), tuple(spec.shape), tuple(spec.flatten().tolist()))
    if isinstance(spec, ResolvedTarget):
        if spec.func is not None or spec.indices is None:
            return None
        neg = None if spec.negative is None else _spec_key(spec.negative)
        return ("resolved", _spec_key(spec.indices), neg)
    if isinstance(spec, (list, tuple)):
        parts = [_spec_key(s) for s in spec]
        return None if any(p is None for p in parts) else (type(spec).__name__, tuple(parts))
    return None


def clean_outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's outputs on ``x`` without gradients, in chunks of ``batch_size``
    (:func:`~convscope.models.forward.chunked_outputs`), computed once per shared pass.

    Returns:
        (B, K) outputs, a new tensor on every call.
    """
    out = shared(("clean_outputs", int(batch_size)), model, x,
                 lambda: chunked_outputs(model, x, batch_size))
    return out.clone()
