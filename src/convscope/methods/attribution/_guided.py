"""Scoped ReLU backward rules for guided backpropagation and the deconvnet.

Both methods differentiate the network as usual except at its rectifiers, where the backward
signal ``g`` (the gradient arriving from above) is replaced:

* guided backprop (Springenberg et al. 2015): ``g_in = relu(g) * [x > 0]``, the ordinary ReLU
  gradient with negative backward signals zeroed as well;
* deconvnet (Zeiler and Fergus 2014): ``g_in = relu(g)``, the rectifier applied to the backward
  signal, ignoring the forward pass.

How the rule is applied. :func:`relu_rules` is a context manager that activates a
:class:`torch.overrides.TorchFunctionMode` for the duration of the forward pass only. The mode
sees every rectifier however it is called: ``nn.ReLU`` (including ``inplace=True``, as in ResNet),
``F.relu`` / ``torch.relu`` / ``x.relu()`` written directly in ``forward`` (as in DenseNet), their
in-place forms, and ``nn.ReLU6`` / ``F.relu6`` / ``F.hardtanh(min_val=0)`` (as in MobileNetV2).
Each call is replaced by a custom autograd function with the same forward value (in-place calls
stay in-place, through ``ctx.mark_dirty``) and the rule's backward. Because the rule is attached
per *call*, a module that runs twice in one forward pass (ResNet's ``BasicBlock.relu``) gets a
correct, separate backward at each call site, and no hook is registered on the model at all.
Nothing in ``torch`` is patched: the mode is popped in ``finally`` and other threads never see it.

ReLU6 (and ``hardtanh`` with ``min_val=0``): guided backprop uses the true local mask
``[0 < x < 6]`` times ``relu(g)``; the deconvnet uses ``relu(g)`` (it ignores the forward pass,
so the upper clip is ignored as well). Documented choice.

Activations without a defined rule (SiLU, GELU, Hardswish, Mish, ELU, SELU, CELU, LeakyReLU,
PReLU, RReLU, Softplus, hardtanh with ``min_val != 0``): with ``nonrelu="error"`` (default) the
forward pass stops with a :class:`~convscope.core.errors.MethodError` naming the activation; with
``nonrelu="gradient"`` they pass the ordinary gradient (what Captum does for any non-ReLU module).
Gates and normalisers (sigmoid, hardsigmoid, tanh, softmax) always pass the ordinary gradient:
they are not rectifiers. ReLUs written as ``clamp(min=0)`` or ``max(x, 0)`` are not recognised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from convscope.core.errors import MethodError

__all__ = ["RULES", "RuleSwitch", "relu_rules"]

RULES = ("guided", "deconvnet")
NONRELU_CHOICES = ("error", "gradient")


def _rectify_backward(rule: str, grad: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    g = grad.clamp(min=0)
    if rule == "guided":
        assert mask is not None
        g = g * mask
    return g


class RuleSwitch:
    """A rule read when the backward pass runs, not when the forward pass is recorded.

    ``relu_rules(RuleSwitch("plain"))`` records a forward pass whose rectifiers first give the
    ordinary gradient (``"plain"``: the same kernels as autograd's own ReLU and hardtanh
    backward, so the same numbers); set ``switch.rule = "guided"`` (or ``"deconvnet"``) before a
    later backward pass of the same graph (``retain_graph=True``) to get that rule. Guided
    Grad-CAM takes the ordinary gradient at its layer and guided backprop's at the input from one
    forward pass this way.
    """

    def __init__(self, rule: str = "plain") -> None:
        self.rule = rule


class _RuleClamp(torch.autograd.Function):
    """``clamp(x, 0, hi)`` (``hi=None``: ReLU) with the guided or deconvnet backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, hi: float | None, rule: str | RuleSwitch,
                inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.clamp_(min=0.0, max=hi)
            ctx.mark_dirty(x)
        else:
            out = x.clamp(min=0.0, max=hi)
        ctx.rule = rule
        ctx.hi = hi
        if rule != "deconvnet":
            # the output decides the mask exactly: out in (0, hi) <=> x in (0, hi)
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        rule = ctx.rule.rule if isinstance(ctx.rule, RuleSwitch) else ctx.rule
        if rule == "plain":  # what autograd's ReluBackward / HardtanhBackward compute
            (out,) = ctx.saved_tensors
            if ctx.hi is None:
                return torch.ops.aten.threshold_backward(grad, out, 0), None, None, None
            return torch.ops.aten.hardtanh_backward(grad, out, 0.0, ctx.hi), None, None, None
        mask = None
        if rule == "guided":
            (out,) = ctx.saved_tensors
            m = out > 0
            if ctx.hi is not None:
                m = m & (out < ctx.hi)
            mask = m.to(grad.dtype)
        return _rectify_backward(rule, grad, mask), None, None, None


def _apply(x: torch.Tensor, hi: float | None, rule: str | RuleSwitch, inplace: bool) -> torch.Tensor:
    return _RuleClamp.apply(x, hi, rule, inplace)


def _bind(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
          names: tuple[str, ...], defaults: tuple[Any, ...]) -> list[Any]:
    vals = list(defaults)
    for i, a in enumerate(args[: len(names)]):
        vals[i] = a
    for k, v in kwargs.items():
        if k in names:
            vals[names.index(k)] = v
    return vals


# func -> (parameter names, defaults, builder(values) -> (hi, inplace) or None for "no rule")
_RELU_FUNCS: dict[Any, tuple[tuple[str, ...], tuple[Any, ...], Callable[[list[Any]], Any]]] = {
    F.relu: (("input", "inplace"), (None, False), lambda v: (None, bool(v[1]))),
    torch.relu: (("input",), (None,), lambda v: (None, False)),
    torch.relu_: (("input",), (None,), lambda v: (None, True)),
    torch.Tensor.relu: (("self",), (None,), lambda v: (None, False)),
    torch.Tensor.relu_: (("self",), (None,), lambda v: (None, True)),
    F.relu6: (("input", "inplace"), (None, False), lambda v: (6.0, bool(v[1]))),
    F.hardtanh: (
        ("input", "min_val", "max_val", "inplace"),
        (None, -1.0, 1.0, False),
        lambda v: (float(v[2]), bool(v[3])) if float(v[1]) == 0.0 else None,
    ),
    F.hardtanh_: (
        ("input", "min_val", "max_val"),
        (None, -1.0, 1.0),
        lambda v: (float(v[2]), True) if float(v[1]) == 0.0 else None,
    ),
}

_OTHER_ACTIVATIONS: dict[Any, str] = {
    F.silu: "SiLU/Swish (F.silu)",
    F.gelu: "GELU (F.gelu)",
    F.hardswish: "Hardswish (F.hardswish)",
    F.mish: "Mish (F.mish)",
    F.elu: "ELU (F.elu)",
    F.selu: "SELU (F.selu)",
    F.celu: "CELU (F.celu)",
    F.leaky_relu: "LeakyReLU (F.leaky_relu)",
    F.prelu: "PReLU (F.prelu)",
    F.rrelu: "RReLU (F.rrelu)",
    F.softplus: "Softplus (F.softplus)",
}


class _RuleMode(TorchFunctionMode):
    def __init__(self, rule: str | RuleSwitch, nonrelu: str, method: str) -> None:
        super().__init__()
        self.rule = rule
        self.nonrelu = nonrelu
        self.method = method
        self.rectifiers = 0
        self.others: dict[str, int] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        spec = _RELU_FUNCS.get(func)
        if spec is not None:
            names, defaults, build = spec
            vals = _bind(func, args, kwargs, names, defaults)
            how = build(vals)
            x = vals[0]
            if how is not None and isinstance(x, torch.Tensor) and x.is_floating_point():
                hi, inplace = how
                self.rectifiers += 1
                return _apply(x, hi, self.rule, inplace)
            if how is None:  # hardtanh with a non-zero lower bound
                return self._other(func, args, kwargs, "Hardtanh (min_val != 0)")
        name = _OTHER_ACTIVATIONS.get(func)
        if name is not None:
            return self._other(func, args, kwargs, name)
        return func(*args, **kwargs)

    def _other(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
        if self.nonrelu == "error":
            raise MethodError(
                f"{self.method} has no rule for the activation {name} found in this model's "
                "forward pass (the rule is defined for ReLU and ReLU6 only); pass "
                "nonrelu='gradient' (--option nonrelu=gradient) to let other activations pass the "
                "ordinary gradient, or use saliency / integrated_gradients"
            )
        self.others[name] = self.others.get(name, 0) + 1
        return func(*args, **kwargs)


@contextmanager
def relu_rules(rule: str | RuleSwitch = "guided", *, nonrelu: str = "error",
               method: str | None = None) -> Iterator[_RuleMode]:
    """Apply the ``rule`` ("guided" or "deconvnet") to every rectifier called inside the block.

    Only the forward passes run inside the block need it: the rule travels with the autograd
    graph, so the backward pass may run after the block has exited.

    Args:
        rule: ``"guided"`` (guided backprop) or ``"deconvnet"``, or a :class:`RuleSwitch` (the
            rule is read at backward time).
        nonrelu: ``"error"`` refuses activations without a rule (SiLU, GELU, ...);
            ``"gradient"`` lets them pass the ordinary gradient.
        method: name used in error messages.

    Yields:
        The active mode; after the block, ``mode.rectifiers`` counts rectifier calls and
        ``mode.others`` the activations that passed the ordinary gradient.

    Example:
        >>> with relu_rules("guided"):
        ...     out = model(x)
        >>> g, = torch.autograd.grad(out[:, 3].sum(), x)
    """
    if not isinstance(rule, RuleSwitch) and rule not in RULES:
        raise MethodError(f"unknown ReLU rule {rule!r}; use one of {', '.join(RULES)}")
    if nonrelu not in NONRELU_CHOICES:
        raise MethodError(
            f"nonrelu must be one of {', '.join(NONRELU_CHOICES)}, got {nonrelu!r}"
        )
    mode = _RuleMode(rule, nonrelu, method or str(getattr(rule, "rule", rule)))
    mode.__enter__()
    try:
        yield mode
    finally:
        mode.__exit__(None, None, None)
