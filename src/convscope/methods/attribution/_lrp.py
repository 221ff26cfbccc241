"""LRP on zennit: composites by name, canonizers chosen for the model, the input box taken from the
preprocessing, the coverage check, and a guard that undoes everything a canonizer or rule changed.

The rules, composites and canonizers are zennit's (Anders et al., "Software for dataset-wide XAI:
from local explanations to global insights with Zennit, CoRelAy, and ViRelAy", 2021); this module
only picks them and checks that they cover the network:

* **canonizers**: torchvision ResNets get zennit's ``ResNetCanonizer`` (batch norms merged into the
  convolution before them, and each residual addition made a ``Sum`` module that gets a rule);
  timm ResNets convscope's own ``TimmResNetCanonizer`` (the same two steps for timm's blocks,
  :mod:`convscope.methods.attribution._lrp_timm`); torchvision VGGs ``VGGCanonizer``; any other
  network with a convolution or linear layer directly followed by a batch norm (in module order)
  ``SequentialMergeBatchNorm`` (timm VGGs take this path). Which ran is recorded.
  A merge pairs each batch norm with the layer registered just before it; during the forward pass
  convscope checks that the batch norm's input really is that layer's output (data flow, not
  registration order) and refuses the model in one line where it is not.
* **coverage** (refused with one line naming the layer, never a wrong map): attention modules (any
  module whose class name contains "Attention", ``nn.MultiheadAttention``), and leaf modules no
  rule covers: activations other than ReLU / ReLU6 (GELU, SiLU, Sigmoid, Tanh, ... : LRP's rules
  assume a rectifier that passes relevance unchanged), normalisation layers other than a batch
  norm that follows a convolution or linear layer (LayerNorm, GroupNorm, a lone BatchNorm), and
  any module type convscope does not know. During the forward pass, functional non-ReLU
  activations (``F.gelu``, ``F.silu``, ...), attention (``F.scaled_dot_product_attention``),
  residual additions written as ``a + b`` of two activations, and products of two activations (a
  gate) are refused the same way: the gradient would pass them with no LRP rule.
* **what passes as the gradient** (documented, not refused): ``F.relu`` / ``torch.relu`` written in
  ``forward`` (exactly as zennit's ``Pass`` rule on an ``nn.ReLU``: a unit with zero activation
  carries zero relevance either way), max pooling (winner takes all) and reshapes. A mean or sum
  written in ``forward`` (``x.mean((2, 3))``) shares relevance equally between its inputs instead
  of in proportion to them (the rule an ``nn.AdaptiveAvgPool2d`` module gets); use the module
  where that matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convscope.core.errors import MethodError
from convscope.methods.attribution._guided import _OTHER_ACTIVATIONS
from convscope.methods.attribution._lrp_timm import is_timm_resnet_block, timm_resnet_canonizer
from convscope.models.preprocessing import Preprocessing

__all__ = ["COMPOSITES", "INSTALL", "LrpSetup", "box_of", "lrp_rules", "restored", "zennit"]

#: The composites the ``lrp`` method offers (zennit's names).
COMPOSITES = ("epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat", "excitation_backprop")
INSTALL = "pip install 'convscope[lrp]'"
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
_PASSING = (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.Flatten, nn.Unflatten, nn.Identity)


def zennit() -> Any:
    """The ``zennit`` package, or one line saying how to install it.

    Raises:
        MethodError: zennit is not installed.
    """
    try:
        import zennit as zn
        import zennit.canonizers
        import zennit.composites
        import zennit.torchvision
        import zennit.types  # noqa: F401
    except ImportError:
        raise MethodError(f"LRP needs the zennit package, which is not installed: {INSTALL}") from None
    return zn


def box_of(preprocessing: Preprocessing | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of valid model inputs: where pixels in [0, 1] land after normalisation.

    Returns:
        (low, high), each (1, C, 1, 1): ``(0 - mean) / std`` and ``(1 - mean) / std`` per channel
        (``[0, 1]`` when there is no preprocessing).
    """
    if preprocessing is None:
        mean, std = (0.0,) * channels, (1.0,) * channels
    else:
        mean, std = preprocessing.mean, preprocessing.std
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s


def _kind(module: nn.Module) -> str:
    return type(module).__name__


def _choose_canonizers(net: nn.Module) -> list[Any]:
    """zennit canonizer instances for ``net`` (see the module docstring)."""
    zn = zennit()
    from torchvision.models import VGG
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in net.modules()):
        return [zn.torchvision.ResNetCanonizer()]
    if any(is_timm_resnet_block(m) for m in net.modules()):
        return [timm_resnet_canonizer()]
    if isinstance(net, VGG):
        return [zn.torchvision.VGGCanonizer()]
    leaves = list(zn.core.collect_leaves(net))
    pairs = zip(leaves, leaves[1:], strict=False)
    if any(isinstance(a, zn.types.Linear) and isinstance(b, zn.types.BatchNorm) for a, b in pairs):
        return [zn.canonizers.SequentialMergeBatchNorm()]
    return []


def _check_modules(net: nn.Module, merged_bn: bool) -> None:
    """Refuse a network with a module no rule covers (one line naming the layer)."""
    zn = zennit()
    names = {m: n for n, m in net.named_modules()}
    for name, m in net.named_modules():  # the root's own class name says nothing about its layers
        if isinstance(m, nn.MultiheadAttention) or (name and "attention" in _kind(m).lower()):
            raise MethodError(f"lrp cannot explain this model: layer {name!r} is attention "
                              f"({_kind(m)}), which no LRP rule of zennit covers; use a gradient method "
                              "(saliency, integrated_gradients) or attention rollout")
    covered = (zn.types.Convolution, nn.Linear, zn.types.AvgPool, zn.types.MaxPool) + _PASSING
    previous: nn.Module | None = None
    for leaf in zn.core.collect_leaves(net):
        name = names.get(leaf, "?")
        if isinstance(leaf, zn.types.BatchNorm):
            if not (merged_bn and isinstance(previous, zn.types.Linear)):
                raise MethodError(f"lrp cannot explain this model: batch norm {name!r} does not directly "
                                  "follow a convolution or linear layer (in module order), so it cannot be "
                                  "merged into one and no LRP rule covers it alone")
            if leaf.weight is None or leaf.running_mean is None:
                raise MethodError(f"lrp cannot explain this model: batch norm {name!r} has no affine "
                                  "weights or running statistics, so it cannot be merged into the layer "
                                  "before it")
        elif not isinstance(leaf, covered):
            raise MethodError(f"lrp cannot explain this model: layer {name!r} ({_kind(leaf)}) has no LRP "
                              "rule (LRP covers convolutions, linear layers, pooling, batch norms after a "
                              "convolution and ReLU-type activations); use a gradient method instead")
        previous = leaf


_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
         torch.Tensor.__iadd__}
_MULS = {torch.mul, torch.Tensor.mul, torch.Tensor.mul_, torch.Tensor.__mul__, torch.Tensor.__rmul__,
         torch.Tensor.__imul__}
_REFUSED = {**_OTHER_ACTIVATIONS,
            F.scaled_dot_product_attention: "attention (F.scaled_dot_product_attention)",
            F.multi_head_attention_forward: "attention (F.multi_head_attention_forward)",
            F.layer_norm: "LayerNorm (F.layer_norm)", F.group_norm: "GroupNorm (F.group_norm)",
            torch.sigmoid: "a sigmoid gate (torch.sigmoid)",
            torch.Tensor.sigmoid: "a sigmoid gate (x.sigmoid())",
            torch.tanh: "tanh (torch.tanh)", torch.Tensor.tanh: "tanh (x.tanh())"}


def _both_activations(args: tuple[Any, ...]) -> bool:
    ts = [a for a in args[:2] if isinstance(a, torch.Tensor)]
    return len(ts) == 2 and all(t.requires_grad for t in ts)


#: autograd nodes a tensor passes through between a layer and the next module unchanged (zennit's
#: rule hooks wrap each output in an identity function and a clone)
_PASS_NODES = ("CloneBackward0", "IdentityBackward", "BackwardHookFunctionBackward", "ViewBackward0")

#: a batch norm's weight id -> (the weight id of the layer it is merged into, bn name, layer name)
BnPairs = dict[int, tuple[int, str, str]]


def bn_pairs(net: nn.Module) -> BnPairs:
    """Each batch norm of ``net`` and the layer registered just before it (what a merge pairs)."""
    zn = zennit()
    names = {m: n for n, m in net.named_modules()}
    leaves = list(zn.core.collect_leaves(net))
    return {id(b.weight): (id(a.weight), names.get(b, "?"), names.get(a, "?"))
            for a, b in zip(leaves, leaves[1:], strict=False)
            if isinstance(b, zn.types.BatchNorm) and isinstance(a, zn.types.Linear) and b.weight is not None}


def _producer(t: torch.Tensor) -> Any:
    """The autograd node that made ``t``, looking through identity and clone nodes."""
    node = t.grad_fn
    while node is not None and type(node).__name__ in _PASS_NODES:
        inputs = [n for n, _ in node.next_functions if n is not None]
        node = inputs[0] if len(inputs) == 1 else None
    return node


class _Watch(TorchFunctionMode):
    """Refuses, during the LRP forward pass, functional operations no rule covers, and a batch norm
    whose input is not the output of the layer it was merged into."""

    def __init__(self, pairs: BnPairs | None = None) -> None:
        super().__init__()
        self.pairs = pairs or {}
        self.made: dict[int, Any] = {}  # a layer's weight id -> the autograd node of its last output

    def _check_merge(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if func in (F.conv1d, F.conv2d, F.conv3d, F.linear) and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            self.made[id(weight)] = out.grad_fn
        elif func is F.batch_norm and self.pairs:
            weight = args[3] if len(args) > 3 else kwargs.get("weight")
            pair = self.pairs.get(id(weight))
            x = args[0]
            if pair is None or x.grad_fn is None:
                return
            layer_w, bn_name, layer_name = pair
            made = self.made.get(layer_w)
            if made is None or _producer(x) is not made:
                raise MethodError(f"lrp cannot explain this model: batch norm {bn_name!r} is merged into "
                                  f"{layer_name!r}, the layer registered before it, but its input in the "
                                  "forward pass is not that layer's output; register each batch norm right "
                                  "after the layer that feeds it, or use a gradient method")

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        what = _REFUSED.get(func)
        if what is None and func in _ADDS and _both_activations(args):
            what = "an addition of two activations (a skip connection written as a + b)"
        if what is None and func in _MULS and _both_activations(args):
            what = "a product of two activations (a gate)"
        if what is not None:
            raise MethodError(f"lrp cannot explain this model: its forward pass computes {what}, which no "
                              "LRP rule covers (convscope's canonizers cover torchvision ResNets' skip "
                              "connections); use a gradient method instead")
        out = func(*args, **(kwargs or {}))
        self._check_merge(func, args, kwargs or {}, out)
        return out


def _snapshot(net: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    out = []
    for m in net.modules():
        state: dict[str, Any] = {
            "dict": dict(vars(m)),
            "params": dict(m._parameters),
            "pdata": {k: p.data for k, p in m._parameters.items() if p is not None},
            "buffers": dict(m._buffers),
            "bdata": {k: b.data for k, b in m._buffers.items() if b is not None},
            "modules": dict(m._modules),
            "hooks": {h: list(getattr(m, h)) for h in _HOOK_DICTS if hasattr(m, h)},
        }
        out.append((m, state))
    return out


def _restore(saved: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, st in saved:
        for h, keys in st["hooks"].items():
            d = getattr(m, h)
            for k in [k for k in d if k not in keys]:
                del d[k]
        for key in [k for k in vars(m) if k not in st["dict"]]:
            delattr(m, key)
        for key, value in st["dict"].items():
            if key not in ("_parameters", "_buffers", "_modules") and vars(m).get(key) is not value:
                object.__setattr__(m, key, value)
        for attr, kind in (("_parameters", "params"), ("_buffers", "buffers"), ("_modules", "modules")):
            d = getattr(m, attr)
            if d != st[kind] or list(d) != list(st[kind]):
                d.clear()
                d.update(st[kind])
        for kind, attr in (("pdata", "_parameters"), ("bdata", "_buffers")):
            for k, data in st[kind].items():
                t = getattr(m, attr)[k]
                if t.data_ptr() != data.data_ptr() or t.shape != data.shape or t.stride() != data.stride():
                    t.data = data


@contextmanager
def restored(net: nn.Module) -> Iterator[None]:
    """Undo, on exit (errors included), every change to ``net``'s modules: parameters and buffers
    (objects and data), sub-modules, instance attributes (a canonizer's ``forward``) and hooks
    added inside the block. Hooks and attributes that were there before are left alone."""
    saved = _snapshot(net)
    try:
        yield
    finally:
        _restore(saved)


class LrpSetup:
    """What :func:`lrp_rules` applied, for the result's record; :meth:`forward` runs the model.

    Attributes:
        composite: the composite's name.
        canonizers: the class names of the canonizers applied.
        first_layer: the layer that got the composite's first-layer rule (box or flat), or ``None``.
        box: ``(low, high)`` per channel for ``epsilon_gamma_box``, else ``None``.
    """

    def __init__(self, composite: str, canonizers: list[str], first_layer: str | None,
                 box: tuple[list[float], list[float]] | None, pairs: BnPairs | None = None) -> None:
        self.composite = composite
        self.canonizers = canonizers
        self.first_layer = first_layer
        self.box = box
        self.pairs = pairs or {}

    def forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        """``model(x)``, refusing functional operations no LRP rule covers (see the module docstring).

        Only the forward pass is watched: the rules' own backward computations are zennit's.
        """
        with _Watch(self.pairs):
            return model(x)

    def info(self) -> dict[str, Any]:
        """A JSON-able record of the setup."""
        return {"composite": self.composite, "canonizers": list(self.canonizers),
                "first_layer": self.first_layer,
                "box": None if self.box is None else {"low": self.box[0], "high": self.box[1]}}


def _composite(name: str, canonizers: list[Any], epsilon: float, gamma: float,
               box: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    zc = zennit().composites
    if name == "epsilon_gamma_box":
        assert box is not None
        return zc.EpsilonGammaBox(low=box[0], high=box[1], epsilon=epsilon, gamma=gamma,
                                  canonizers=canonizers)
    if name == "excitation_backprop":
        return zc.ExcitationBackprop(canonizers=canonizers)
    cls = {"epsilon_plus": zc.EpsilonPlus, "epsilon_plus_flat": zc.EpsilonPlusFlat,
           "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
           "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}[name]
    return cls(epsilon=epsilon, canonizers=canonizers)


def _first_layer(net: nn.Module, composite: str) -> str | None:
    zn = zennit()
    kind = {"epsilon_gamma_box": zn.types.Convolution, "epsilon_plus_flat": zn.types.Linear,
            "epsilon_alpha2_beta1_flat": zn.types.Linear}.get(composite)
    if kind is None:
        return None
    return next((n for n, m in net.named_modules() if isinstance(m, kind)), None)


@contextmanager
def lrp_rules(net: nn.Module, composite: str = "epsilon_plus_flat", *, epsilon: float = 1e-6,
              gamma: float = 0.25, preprocessing: Preprocessing | None = None,
              channels: int = 3) -> Iterator[LrpSetup]:
    """Inside the block, gradients of ``net`` are LRP relevances under ``composite``.

    Canonizers are chosen for ``net``, the coverage is checked (one-line refusal naming the layer),
    the composite is registered, and on exit everything is undone, errors included. Forward passes
    inside the block are watched for functional operations no rule covers.

    Args:
        net: the user's network (unwrapped: the module whose layers get the rules).
        composite: one of :data:`COMPOSITES`.
        epsilon: the epsilon rule's stabiliser (fully connected layers).
        gamma: the gamma rule's weight of positive contributions (``epsilon_gamma_box`` only).
        preprocessing: gives the box of ``epsilon_gamma_box`` (see :func:`box_of`).
        channels: input channels (for the box when there is no preprocessing).

    Yields:
        An :class:`LrpSetup` saying what was applied.

    Raises:
        MethodError: an unknown composite, zennit missing, or a layer no rule covers.
    """
    if composite not in COMPOSITES:
        raise MethodError(f"unknown LRP composite {composite!r}; use one of {', '.join(COMPOSITES)}")
    zennit()
    canonizers = _choose_canonizers(net)
    _check_modules(net, merged_bn=bool(canonizers))
    box = box_of(preprocessing, channels) if composite == "epsilon_gamma_box" else None
    if box is not None:
        p = next(net.parameters(), None)
        if p is not None:
            box = (box[0].to(p.device, p.dtype), box[1].to(p.device, p.dtype))
    setup = LrpSetup(composite, [type(c).__name__ for c in canonizers], _first_layer(net, composite),
                     None if box is None else (box[0].flatten().tolist(), box[1].flatten().tolist()),
                     bn_pairs(net) if canonizers else None)
    comp = _composite(composite, canonizers, epsilon, gamma, box)
    with restored(net):
        try:
            comp.register(net)
            yield setup
        finally:
            comp.remove()
