"""``state_guard()``: put a model in eval mode with frozen weights for a block, and restore it.

Every facade and :func:`convscope.core.hooks.capture` run the model inside one; it is imported
from :mod:`convscope.core.hooks` as well (its old home).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["state_guard"]


def _modules(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module under it, each once, read from ``_modules`` (what ``train()`` and
    ``eval()`` walk): about a quarter of ``list(model.modules())``'s time, which builds a name for
    every module (and a wrapper that overrides ``named_modules`` still has its own flag here)."""
    out, seen = [model], {id(model)}
    for m in out:  # the list grows while it is read: breadth first
        kids = list(m._modules.values())
        if type(m).named_modules is not nn.Module.named_modules:  # a wrapper may list modules of its own
            kids += list(m.modules())
        for c in kids:
            if c is not None and id(c) not in seen:
                seen.add(id(c))
                out.append(c)
    return out


def _format_fits(t: torch.Tensor, memory_format: torch.memory_format) -> bool:
    if memory_format == torch.channels_last:
        return t.dim() == 4
    if memory_format == torch.channels_last_3d:
        return t.dim() == 5
    return True


@contextmanager
def state_guard(
    model: nn.Module | None = None,
    tensors: Iterable[torch.Tensor] = (),
    *,
    eval_mode: bool = True,
    freeze: bool = True,
    memory_format: torch.memory_format | None = None,
) -> Iterator[None]:
    """Put ``model`` in eval mode with frozen weights and restore everything on exit.

    Restores each module's ``training`` flag, each parameter's ``requires_grad`` and, for every
    tensor in ``tensors``, its ``requires_grad`` and ``.grad``.

    With ``memory_format`` (e.g. ``torch.channels_last``) every parameter and buffer of a rank
    that format applies to (4-D for ``channels_last``) is converted for the block: a parameter
    gets a converted ``.data`` (the ``Parameter`` object stays the same), a buffer a converted
    tensor in its module's ``_buffers``. On exit each parameter gets its original ``.data`` and
    each module its original buffer object back, so storage, strides and values are exactly the
    caller's again, errors included.

    A guard nested in another one on the same model walks the model again and restores what it
    found, so it holds whatever the code between the two guards changed, and guards may close in
    any order (a generator holding one open is closed later).

    """
    modes: list[tuple[nn.Module, bool]] = []
    flags: list[tuple[torch.nn.Parameter, bool]] = []
    datas: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    bufs: list[tuple[nn.Module, str, torch.Tensor]] = []
    saved = [(t, t.requires_grad, t.grad) for t in tensors if isinstance(t, torch.Tensor)]
    if model is not None:
        modules = _modules(model)  # one traversal (a shared parameter is listed twice: harmless)
        modes = [(m, m.training) for m in modules]
        flags = [(p, p.requires_grad) for m in modules for p in m._parameters.values() if p is not None]
        if memory_format is not None:
            for m in modules:
                datas += [(p, p.data) for p in m._parameters.values()
                          if p is not None and _format_fits(p, memory_format)]
                bufs += [(m, k, b) for k, b in m._buffers.items()
                         if b is not None and _format_fits(b, memory_format)]
    try:
        for t, _, _ in saved:  # keep the caller's .grad out of reach of any backward pass
            if t.is_leaf:
                t.grad = None
        if model is not None:
            # flip only what differs (Module.__setattr__ and requires_grad_ cost per call, and a
            # model already in eval mode with frozen weights is the common case)
            if eval_mode and any(training for _, training in modes):
                model.eval()
            if freeze:
                for p, req in flags:
                    if req:
                        p.requires_grad_(False)
            for p, d in datas:
                p.data = d.contiguous(memory_format=memory_format)  # type: ignore[arg-type]
            for m, k, b in bufs:
                m._buffers[k] = b.contiguous(memory_format=memory_format)  # type: ignore[arg-type]
        yield
    finally:
        for p, d in datas:
            p.data = d
        for m, k, b in bufs:
            m._buffers[k] = b
        for m, training in modes:
            if m.training != training:
                m.training = training
        for p, req in flags:
            if p.requires_grad != req:
                p.requires_grad_(req)
        for t, req, grad in saved:
            if t.is_leaf:
                t.requires_grad_(req)
                t.grad = grad
