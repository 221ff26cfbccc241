"""Capture the attention probabilities of a vision transformer without touching its code.

:func:`attention_capture` is a context manager for one call. Where the model's attention modules
are known it reads the probabilities at the module that computes them, with hooks
(:func:`convscope.core.hooks.capture`, removed on exit):

* ``nn.MultiheadAttention`` (torchvision ``VisionTransformer``): a forward pre-hook asks the call
  for ``need_weights=True, average_attn_weights=False``; the forward hook keeps the per-head
  weights and returns what the module would have returned (``(out, None)`` for the
  ``need_weights=False`` ViTs ask for). Without gradients PyTorch's native fused MHA kernel still
  runs (it computes the weights when asked). With gradients the tensor differentiated is the one
  that multiplies ``v``: the softmax output the returned weights are a view of.
* timm ``Attention``: ``fused_attn`` is switched off for the call (the explicit-softmax path timm
  ships) and the probabilities are read at its ``attn_drop`` (the identity in eval mode), the
  tensor that multiplies ``v``.
* Hugging Face attention modules that dispatch through ``ALL_ATTENTION_FUNCTIONS``:
  ``config._attn_implementation`` is ``"eager"`` for the call (one config shared by every block:
  all blocks run eager) and the weights are the second item of the module's output.

A model whose own code calls a fused kernel elsewhere (``F.scaled_dot_product_attention``,
``F.multi_head_attention_forward``) runs the whole call under the function mode of
:mod:`._attn_mode` instead (kernels replaced by step-by-step attention): one mechanism per call,
never both. Every flag is put back in ``finally``, errors included, and what was switched is
recorded. The maps are the same whichever path the owner chose (fused or not).

Threads: the hooks act only for the thread that opened the capture (another thread's call passes
through them untouched), and captures that share a module (the model, an attention module, a module
whose flag is switched) wait for each other (:func:`_exclusive`), because the flags are shared state
every thread sees.
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.core.errors import MethodError
from convscope.core.hooks import capture
from convscope.methods.attribution._attn_mode import AttentionMode, mha_refusal

__all__ = ["AttentionCapture", "attention_capture", "attention_grads", "calls_attention_kernel"]

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


@functools.lru_cache(maxsize=512)
def _class_calls_kernel(cls: type) -> bool:
    """Whether ``cls.forward`` (not ``torch.nn``'s own) may reach a kernel (:func:`_reaches_kernel`)."""
    fn = getattr(cls, "forward", None)
    if not isinstance(fn, types.FunctionType) or fn.__module__.startswith("torch.nn"):
        return False
    return _reaches_kernel(fn, cls, {id(fn)})


def calls_attention_kernel(model: nn.Module) -> bool:
    """Whether the model's code may call a kernel :class:`AttentionCapture` captures
    (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``): read from the bytecode of each
    module's ``forward`` (``torch.nn``'s own skipped) and of the methods and module-level functions it
    calls, without running it. Code that cannot be read (TorchScript) counts as may call."""
    return any(issubclass(cls, torch.jit.ScriptModule) or _class_calls_kernel(cls)  # per class: ``self.x``
               for cls in {type(m) for m in model.modules()})


_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")


def _site(m: nn.Module) -> str | None:
    """How a hook reads this module's attention: ``"mha"``, ``"timm"``, ``"hf"`` or ``None``."""
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    cls = type(m)
    if (cls.__module__.startswith("timm.") and cls.__name__ == "Attention" and hasattr(m, "fused_attn")
            and type(getattr(m, "attn_drop", None)) is nn.Dropout):
        return "timm"
    fwd = getattr(cls, "forward", None)
    cfg = getattr(m, "config", None)
    if (isinstance(fwd, types.FunctionType) and hasattr(cfg, "_attn_implementation")
            and "ALL_ATTENTION_FUNCTIONS" in _names(fwd)):
        return "hf"
    return None


@dataclass
class AttentionCapture:
    """What :func:`attention_capture` yields.

    Attributes:
        maps: the attention probabilities of every attention call of the last forward pass (or
            of the last block only, see ``last_of``), in the order they ran, each (B, heads, N, N).
        sources: for each map, the tensor in the autograd graph it is read from (the map itself,
            or the (B * heads, N, N) softmax output an ``nn.MultiheadAttention`` map is a view of):
            differentiate with :func:`attention_grads`.
        switched: what was switched for the call (e.g. ``"blocks.0.attn.fused_attn: True -> False"``).
        how: ``"hooks"`` or ``"function mode"``.
        modules: how many attention modules the hooks read the model through (0 for the mode).
        thread: the thread that opened the capture, the only one whose calls the hooks read.
    """

    maps: list[torch.Tensor] = field(default_factory=list)
    sources: list[torch.Tensor] = field(default_factory=list)
    switched: list[str] = field(default_factory=list)
    how: str = "hooks"
    modules: int = 0
    thread: int = field(default_factory=threading.get_ident)

    def mine(self) -> bool:
        """Whether the running call is the capturing thread's (other threads pass through)."""
        return threading.get_ident() == self.thread

    def reset(self) -> None:
        """Forget the maps (call between forward passes)."""
        self.maps.clear()
        self.sources.clear()

    def _keep(self, w: torch.Tensor, src: torch.Tensor | None = None) -> None:
        self.maps.append(w[None] if w.dim() == 3 else w)  # 3-D: an unbatched call
        self.sources.append(w if src is None else src)


def attention_grads(score: torch.Tensor, maps: list[torch.Tensor], sources: list[torch.Tensor],
                    retain_graph: bool = False) -> list[torch.Tensor]:
    """d ``score.sum()`` / d map for each captured map, shaped like the map (zeros where unused)."""
    got = torch.autograd.grad(score.sum(), sources, allow_unused=True, retain_graph=retain_graph)
    return [torch.zeros_like(m) if g is None else g.reshape(m.shape) for m, g in zip(maps, got, strict=True)]


def _mha_hooks(cap: AttentionCapture, m: nn.MultiheadAttention) -> tuple[Callable[..., Any], ...]:
    """(pre-hook, output replacement) reading ``m``'s per-head weights (see the module docstring)."""
    asked: list[tuple[bool, bool]] = []

    def before(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not cap.mine():
            return None  # another thread's call runs as it was made
        a = {**dict(zip(_MHA_ARGS, args, strict=False)), **kwargs}
        q = a.get("query")
        why = mha_refusal(cross=a.get("key") is not q or a.get("value") is not q,
                          bias_kv=m.bias_k is not None or m.bias_v is not None,
                          zero_attn=bool(m.add_zero_attn),
                          padding=a.get("key_padding_mask") is not None)
        if why:
            raise MethodError(why)
        asked.append((bool(a.get("need_weights", True)), bool(a.get("average_attn_weights", True))))
        return (), {**a, "need_weights": True, "average_attn_weights": False}

    def after(out: Any) -> Any:
        if not cap.mine():
            return out
        want, average = asked.pop()
        y, w = out
        # with gradients the weights are a view of the (B * heads, N, N) softmax output that
        # multiplies v: that is the tensor to differentiate (the view itself is not on the path)
        base = w._base if w.requires_grad else None
        same = base is not None and base.is_contiguous() and w.is_contiguous() and \
            base.numel() == w.numel() and base.data_ptr() == w.data_ptr()
        if w.requires_grad and not same:  # never a silent zero gradient
            raise MethodError("cannot find the attention probabilities of nn.MultiheadAttention in the "
                              "autograd graph (an unknown PyTorch version?); use rollout or raw_attention")
        cap._keep(w, base)
        if not want:
            return y, None
        return y, (w.mean(-3) if average else w)

    return before, after


def _keep_second(cap: AttentionCapture) -> Callable[[Any], Any]:
    def after(out: Any) -> Any:
        if not cap.mine():
            return out
        w = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
        if not isinstance(w, torch.Tensor) or w.dim() != 4:
            raise MethodError("a Hugging Face attention module returned no attention weights in eager mode; "
                              "attention methods cannot read this model")
        cap._keep(w)
        return out

    return after


def _keep_all(cap: AttentionCapture) -> Callable[[Any], Any]:
    def after(out: Any) -> Any:
        if cap.mine():
            cap._keep(out)
        return out

    return after


#: one re-entrant lock per module some capture holds, by id, kept outside the user's modules and
#: dropped when the module is garbage-collected
_LOCKS: dict[int, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def _exclusive(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Hold the lock of each of ``modules`` for the block: captures that share a module wait for
    each other. Locks are taken in one global order (by id), so two captures never wait crosswise."""
    uniq = sorted({id(m): m for m in modules}.items())
    locks = []
    with _LOCKS_GUARD:
        for key, m in uniq:
            if key not in _LOCKS:
                _LOCKS[key] = threading.RLock()
                try:
                    weakref.finalize(m, _LOCKS.pop, key, None)
                except TypeError:  # a module without weak references: its lock stays
                    pass
            locks.append(_LOCKS[key])
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def _config_name(model: nn.Module, cfg: Any) -> str:
    """``cfg`` as the outermost module holding it reaches it: ``"config"`` (the model's own) or
    ``"<module>.config"``."""
    name = next((n for n, m in model.named_modules() if getattr(m, "config", None) is cfg), "")
    return f"{name}.config" if name else "config"


@contextmanager
def attention_capture(model: nn.Module, last_of: int | None = None) -> Iterator[AttentionCapture]:
    """Record the attention probabilities of ``model``'s forward passes inside the block.

    Only the calls of the thread that opens the capture are read (other threads' calls pass
    through untouched), and captures of the same model, from any thread, run one at a time.

    Args:
        model: the network; hooks are removed and flags restored on exit, errors included.
        last_of: read only the last attention module when the hooks find exactly this many (one
            per block): the other blocks keep their fused kernels (Hugging Face: not so, the
            config switched to eager is one object shared by every block). Otherwise every one is read.
    """
    cap = AttentionCapture()
    sites = [(n, m, k) for n, m in model.named_modules() if (k := _site(m)) is not None]
    site_classes = {type(m) for _, m, _ in sites}
    others = {type(m) for m in model.modules()} - site_classes
    if not sites or any(issubclass(c, torch.jit.ScriptModule) or _class_calls_kernel(c) for c in others):
        flagged = [m for m in model.modules() if hasattr(m, "fused_attn") or hasattr(m, "config")]
        with _exclusive([model, *flagged]):
            yield from _mode_capture(model, cap)
        return
    with _exclusive([model, *(m for _, m, _ in sites)]):  # before any flag is read
        cap.modules = len(sites)
        if last_of is not None and len(sites) == last_of:
            sites = sites[-1:]
        flags, layers, before, replace = _plan(model, cap, sites)
        with ExitStack() as stack:
            for obj, attr, old, new in flags:
                stack.callback(setattr, obj, attr, old)
                setattr(obj, attr, new)
            stack.enter_context(capture(model, layers, eval_mode=False, freeze=False, clone=False,
                                        replace=replace, before=before))
            yield cap


_Plan = tuple[list[tuple[Any, str, Any, Any]], list[str], dict[str, Callable[..., Any]],
              dict[str, Callable[[Any], Any]]]


def _plan(model: nn.Module, cap: AttentionCapture, sites: list[tuple[str, nn.Module, str]]) -> _Plan:
    """(flags to switch as (object, attribute, old, new), layers to hook, pre-hooks, output hooks)."""
    flags: list[tuple[Any, str, Any, Any]] = []
    layers: list[str] = []
    before: dict[str, Callable[..., Any]] = {}
    replace: dict[str, Callable[[Any], Any]] = {}
    for name, m, kind in sites:
        if kind == "mha":
            before[name], replace[name] = _mha_hooks(cap, m)
            layers.append(name)
        elif kind == "timm":
            if m.fused_attn:
                flags.append((m, "fused_attn", True, False))
                cap.switched.append(f"{name}.fused_attn: True -> False")
            layers.append(f"{name}.attn_drop" if name else "attn_drop")
            replace[layers[-1]] = _keep_all(cap)
        else:
            cfg = m.config
            if cfg._attn_implementation != "eager" and all(c is not cfg for c, *_ in flags):
                flags.append((cfg, "_attn_implementation", cfg._attn_implementation, "eager"))
                cap.switched.append(f"{_config_name(model, cfg)}._attn_implementation: "
                                    f"{cfg._attn_implementation!r} -> 'eager' (one config shared by every "
                                    "block: all blocks run eager)")
            layers.append(name)
            replace[name] = _keep_second(cap)
    return flags, layers, before, replace


def _mode_capture(model: nn.Module, cap: AttentionCapture) -> Iterator[AttentionCapture]:
    """The function-mode capture (see :mod:`._attn_mode`): kernel paths only, so flags that route
    attention around a kernel (timm ``fused_attn=False``, Hugging Face ``"eager"``) are switched to
    the kernel call for the block."""
    cap.how = "function mode"
    cap.sources = cap.maps  # the step-by-step probabilities are in the graph themselves
    flags: list[tuple[Any, str, Any]] = []
    for name, m in model.named_modules():
        if getattr(m, "fused_attn", None) is False:
            flags.append((m, "fused_attn", False))
            cap.switched.append(f"{name}.fused_attn: False -> True")
        cfg = getattr(m, "config", None)
        impl = getattr(cfg, "_attn_implementation", None) if cfg is not None else None
        if impl == "eager" and all(c is not cfg for c, _, _ in flags):
            flags.append((cfg, "_attn_implementation", impl))
            cap.switched.append(f"{_config_name(model, cfg)}._attn_implementation: 'eager' -> 'sdpa' "
                                "(one config shared by every block)")
    try:
        for obj, attr, _ in flags:
            setattr(obj, attr, True if attr == "fused_attn" else "sdpa")
        with AttentionMode(cap.maps):
            yield cap
    finally:
        for obj, attr, old in flags:
            setattr(obj, attr, old)
