"""``capture()``: the one place in convscope that touches hooks.

Hooks are registered on enter, every handle is kept and removed in ``finally``; the model's
per-module ``training`` flags, every parameter's ``requires_grad`` and the caller's tensors'
``requires_grad`` and ``.grad`` are restored on every exit, errors included.

Layers are named by PyTorch's dotted ``named_modules()`` names; glob patterns (``"layer4.*"``)
are allowed. An unknown name raises :class:`~convscope.core.errors.LayerNotFoundError` listing close
matches.

A captured layer's output is stored as it leaves the module and a clone is handed on, so an
in-place operation later in the network (``ReLU(inplace=True)`` after a convolution, as in
ResNet) cannot overwrite the stored activation or break differentiation with respect to it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from convscope.core.errors import LayerNotFoundError, MethodError
from convscope.core.state import state_guard

__all__ = ["Capture", "capture", "count_hooks", "layer_names", "resolve_layers", "state_guard"]


def layer_names(model: nn.Module) -> list[str]:
    """All dotted module names of ``model`` (the root, named ``""``, excluded)."""
    return [n for n, _ in model.named_modules() if n]


def resolve_layers(model: nn.Module, patterns: str | Sequence[str] | None) -> list[str]:
    """Expand layer names and glob patterns to the dotted names of existing modules.

    Raises:
        LayerNotFoundError: a name or pattern matched nothing; the message lists close names.
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    names: list[str] | None = None  # every name: walked only for a glob or an unknown name
    out: list[str] = []
    seen: set[str] = set()
    for pat in patterns:
        if not any(ch in pat for ch in "*?[") and _submodule(model, pat) is not None:
            hits = [pat]  # a plain name: found by its path, without walking the whole model
        else:
            names = layer_names(model) if names is None else names
            hits = [n for n in names if fnmatch.fnmatchcase(n, pat)] if any(ch in pat for ch in "*?[") else []
        if not hits:
            names = layer_names(model) if names is None else names
            close = difflib.get_close_matches(pat, names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise LayerNotFoundError(
                f"no layer named {pat!r} in {type(getattr(model, 'wrapped', model)).__name__}{hint} "
                "(run `convscope layers MODEL` to list them)"
            )
        out.extend(h for h in hits if h not in seen)
        seen.update(hits)
    return out


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    """The sub-module at dotted path ``name`` (not the root), or ``None``."""
    if not name:
        return None
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def count_hooks(model: nn.Module) -> int:
    """Number of hooks of any kind registered on ``model`` and its sub-modules."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
        ):
            total += len(getattr(m, attr, {}) or {})
    return total


class _StopForward(Exception):
    """Raised from a capture hook to cut a forward pass short (:meth:`Capture.run`; internal)."""


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) and out else out


class Capture:
    """What :func:`capture` hands to the caller inside the ``with`` block.

    Attributes:
        layers: the resolved dotted layer names, in order.
        modules: name -> module.
        calls: ``(name, output)`` of every captured call since the last :meth:`reset`, in the order
            the modules ran (a probe pass over all layers reads execution order from it).
    """

    def __init__(self, model: nn.Module, layers: list[str], clone: bool,
                 replace: dict[str, Callable[[Any], Any]] | None = None) -> None:
        self.model = model
        self._replace = dict(replace or {})
        self.layers = layers
        self.modules: dict[str, nn.Module] = {n: model.get_submodule(n) for n in layers}
        self._calls: dict[str, list[Any]] = {n: [] for n in layers}
        self.calls: list[tuple[str, Any]] = []
        self._clone = clone
        self._pending: set[str] | None = None  # layers still to run before run(stop_after=) stops
        self._enter_graph = False  # run_above(): the next captured tensor output starts the graph
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _make_hook(self, name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            entered = self._enter_graph and isinstance(output, torch.Tensor)
            if entered:
                # run_above(): the graph starts here, at a leaf standing for the layer's output
                self._enter_graph = False
                torch.set_grad_enabled(True)
                output = output.detach().requires_grad_(True)
            self._calls[name].append(output)
            self.calls.append((name, output))
            if self._pending is not None:
                self._pending.discard(name)
                if not self._pending:
                    raise _StopForward
            if name in self._replace:  # the layer's output becomes the replacement's value
                return self._replace[name](output)
            if self._clone and isinstance(output, torch.Tensor):
                return output.clone()
            return output if entered else None

        return hook

    def reset(self) -> None:
        """Forget the stored activations (call between forward passes)."""
        for v in self._calls.values():
            v.clear()
        self.calls.clear()

    def outputs(self, name: str) -> list[Any]:
        """Every output of layer ``name`` since the last :meth:`reset` (empty if it did not run;
        several for a module called more than once per pass)."""
        return list(self._calls[name])

    def run(self, *args: Any, stop_after: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Run the model on ``args``; with ``stop_after``, cut the forward pass short as soon as
        every one of those captured layers has produced its output, and return ``None``.

        The outputs captured up to that point are kept (read them with :meth:`activation`); the
        rest of the network never runs, so a truncated pass costs only the layers it needs.

        Raises:
            MethodError: a ``stop_after`` layer is not captured, or did not run in the pass.
        """
        if not stop_after:
            return self.model(*args, **kwargs)
        unknown = [n for n in stop_after if n not in self._calls]
        if unknown:
            raise MethodError(
                f"stop_after layer(s) {', '.join(unknown)} are not captured; capture them first"
            )
        self._pending = set(stop_after)
        try:
            self.model(*args, **kwargs)
        except _StopForward:
            return None
        finally:
            missing = sorted(self._pending)
            self._pending = None
        raise MethodError(
            f"layer(s) {', '.join(missing)} did not run in the forward pass; pick layers on the "
            "path to the output"
        )

    def run_above(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model with an autograd graph above the captured layers only.

        The network runs without a graph (``torch.no_grad``) until the first captured layer that
        returns a tensor; there grad mode is switched on and the layer's output is replaced by a
        detached leaf that requires grad, recorded as the layer's activation. Everything after
        it is differentiable with respect to that leaf (and to later captured layers, which are
        recorded as usual), and nothing below it builds a graph or can be differentiated: a
        backward pass from the output costs only the layers above the first captured one. Grad
        mode is the caller's again on return, errors included. With ``clone`` (the default) a
        clone of the leaf goes on, so an in-place operation after the layer is allowed.

        Returns:
            The model's output. The caller checks ``requires_grad`` of what it differentiates:
            a layer that runs in a branch beside the first one is not in the graph.
        """
        self._enter_graph = True
        try:
            with torch.no_grad():  # restores the caller's grad mode on exit
                return self.model(*args, **kwargs)
        finally:
            self._enter_graph = False

    def activation(self, name: str) -> torch.Tensor:
        """Output of layer ``name`` in the last forward pass.

        Raises:
            MethodError: the layer ran zero or several times in that pass (a module reused twice
                in one forward is ambiguous; hook one of its call sites instead).
        """
        calls = self._calls[name]
        if len(calls) != 1:
            if not calls:
                raise MethodError(
                    f"layer {name!r} did not run in the forward pass; pick a layer on the path "
                    "to the output"
                )
            raise MethodError(
                f"layer {name!r} ran {len(calls)} times in one forward pass (a reused module); "
                "pick a layer that runs once"
            )
        out = calls[0]
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise MethodError(f"layer {name!r} returned {type(out).__name__}, not a tensor")
        return out

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """name -> output, for every captured layer that ran exactly once and gave a tensor (or a
        tuple that starts with one; a block returning a dict or a ``ModelOutput`` is left out)."""
        return {n: self.activation(n) for n in self.layers if len(self._calls[n]) == 1
                and isinstance(_first(self._calls[n][0]), torch.Tensor)}


@contextmanager
def capture(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    *,
    tensors: Iterable[torch.Tensor] = (),
    eval_mode: bool = True,
    freeze: bool = True,
    clone: bool = True,
    replace: dict[str, Callable[[Any], Any]] | None = None,
    before: dict[str, Callable[..., Any]] | None = None,
    restore: bool = True,
) -> Iterator[Capture]:
    """Record the outputs of ``layers`` while the block runs forward passes of ``model``.

    Args:
        model: the network. Its state is restored on exit, errors included.
        layers: dotted names or glob patterns (``"features.*"``), or ``None`` for no hooks.
        tensors: the caller's tensors whose ``requires_grad`` and ``.grad`` must be restored.
        eval_mode: put the model in eval mode for the block.
        freeze: turn off ``requires_grad`` on the parameters for the block, so backward passes
            stop where the caller's inputs end and no weight gradient is computed.
        clone: hand a clone of each captured output on to the rest of the network (see module
            docstring); turn off only for layers whose output is never modified in place.
        replace: ``{layer: fn}``: the layer's output ``o`` goes on as ``fn(o)`` (the recorded
            output is the original ``o``); the layers must be among ``layers``.
        before: ``{layer: fn}``: a forward pre-hook with the call's keyword arguments,
            ``fn(module, args, kwargs)``, returning ``None`` or new ``(args, kwargs)`` for the call;
            the layers must be among ``layers``.
        restore: ``False`` only where the caller already holds a :func:`state_guard` of
            ``model`` that sets and restores its modes and flags (a registered method inside the
            facade's): then this capture neither changes nor reads them (``eval_mode`` and
            ``freeze`` must be ``False``), which saves walking the model again per chunk.

    Yields:
        A :class:`Capture` with ``activation(name)`` for the last forward pass.

    Example:
        >>> with capture(model, "layer4") as cap:
        ...     logits = model(x)
        ...     a = cap.activation("layer4")
    """
    names = resolve_layers(model, layers)
    for what, given in (("replace", replace), ("before", before)):
        if given and set(given) - set(names):
            raise MethodError(f"{what} names layers that are not captured: {sorted(set(given) - set(names))}")
    if not restore and (eval_mode or freeze):
        raise MethodError("capture(restore=False) changes nothing on the model: pass eval_mode=False, "
                          "freeze=False and hold a state_guard of the model around it")
    cap = Capture(model, names, clone, replace)
    with state_guard(model if restore else None, tensors, eval_mode=eval_mode, freeze=freeze):
        try:
            for n, fn in (before or {}).items():
                cap.handles.append(cap.modules[n].register_forward_pre_hook(fn, with_kwargs=True))
            for n in names:
                cap.handles.append(cap.modules[n].register_forward_hook(cap._make_hook(n)))
            yield cap
        finally:
            for h in cap.handles:
                h.remove()
            cap.handles.clear()
            cap.reset()


@contextmanager
def stop_forward_when(model: nn.Module, should_stop: Callable[[], bool],
                      error: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``error()`` at the first forward pass of ``model`` that starts once ``should_stop()``.

    A forward pre-hook on the model for the ``with`` block, removed on every exit. The web app
    uses it to stop a job that ran past its deadline at a safe point: :func:`capture` and
    :func:`state_guard` undo their hooks and state flips as the error passes through them.

    Args:
        model: the network whose forward passes are checked.
        should_stop: called before each forward pass of ``model``.
        error: makes the exception raised once ``should_stop()`` returns True.
    """

    def check(_module: nn.Module, _inputs: Any) -> None:
        if should_stop():
            raise error()

    handle = model.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
