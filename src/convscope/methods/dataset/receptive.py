"""Exact receptive fields of conv/pool stacks, and truncated layer feature extraction.

The receptive field of a unit at position ``(i, j)`` of a layer is computed analytically by
composing, along every path from the input to the layer in the traced graph
(``torch.fx``), each convolution's and pooling's kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d``. Per axis a layer carries ``(J, L, R)``: its unit ``i`` sees input pixels
``[i*J + L, i*J + L + R - 1]``. An input starts at ``(1, 0, 1)``; a conv/pool maps

    J' = s*J,   L' = L - p*J,   R' = R + d*(k-1)*J

and a node with several inputs (``x + f(x)`` in a residual block, ``cat``) takes the union
of their boxes (all inputs of such a node share ``J``). Point-wise modules (ReLU, batch norm,
dropout, ...) keep the box. Global pooling, flattening and unknown operations that change the
spatial size end the analysis with a clear error. The box is clipped to the image when patches
are cut (:func:`rf_box`).

:func:`layer_extractor` returns a function computing a layer's activation with convscope's one
way to run part of a network: a forward pass under :func:`convscope.capture` cut short as soon as
the layer has run (:meth:`convscope.core.hooks.Capture.run` with ``stop_after``), so nothing after it
is evaluated; it works for every model, traceable by ``torch.fx`` or not.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from convscope.core.errors import MethodError
from convscope.core.hooks import resolve_layers
from convscope.models.forward import layer_extractor

__all__ = ["ReceptiveField", "layer_extractor", "receptive_field", "rf_box"]


@dataclass(frozen=True)
class ReceptiveField:
    """Per-axis (rows, cols) geometry.

    Unit ``i`` sees pixels ``[i*jump + start, i*jump + start + size - 1]``.
    """

    jump: tuple[int, int]
    start: tuple[int, int]
    size: tuple[int, int]

    def box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) inclusive-exclusive pixel box of unit (i, j), unclipped."""
        t = i * self.jump[0] + self.start[0]
        le = j * self.jump[1] + self.start[1]
        return t, le, t + self.size[0], le + self.size[1]


def rf_box(rf: ReceptiveField, i: int, j: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The box of unit (i, j) clipped to an image of ``height`` x ``width``."""
    t, le, b, r = rf.box(i, j)
    return max(t, 0), max(le, 0), min(b, height), min(r, width)


_Geom = tuple[tuple[int, int, int], tuple[int, int, int]]  # per axis (J, L, R)

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
    nn.Dropout,
    nn.Dropout2d,
)
_POINTWISE_FUNCS = {
    operator.add,
    operator.mul,
    operator.sub,
    operator.truediv,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.mul,
    torch.sub,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.cat,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.dropout,
    F.batch_norm,
    torch.nn.functional.sigmoid,
    F.elu,
}
_POINTWISE_METHODS = {
    "relu",
    "relu_",
    "add",
    "add_",
    "mul",
    "mul_",
    "sigmoid",
    "contiguous",
    "clone",
    "float",
    "to",
    "clamp",
    "clamp_",
}


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _apply(g: _Geom, k: Any, s: Any, p: Any, d: Any) -> _Geom:
    out = []
    for ax, (jj, ll, rr) in enumerate(g):
        kk, ss, pp, dd = _pair(k)[ax], _pair(s)[ax], _pair(p)[ax], _pair(d)[ax]
        out.append((ss * jj, ll - pp * jj, rr + dd * (kk - 1) * jj))
    return out[0], out[1]


def _union(gs: list[_Geom]) -> _Geom:
    out = []
    for ax in range(2):
        js = {g[ax][0] for g in gs}
        if len(js) != 1:
            raise MethodError(
                "branches with different strides meet in one node; the receptive field is not a box"
            )
        lo = min(g[ax][1] for g in gs)
        hi = max(g[ax][1] + g[ax][2] for g in gs)
        out.append((js.pop(), lo, hi - lo))
    return out[0], out[1]


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors on dynamic control flow
        raise MethodError(
            f"{type(model).__name__} cannot be traced with torch.fx ({type(exc).__name__}); exact "
            "receptive fields need a traceable conv/pool network"
        ) from None


def _layer_node(gm: fx.GraphModule, layer: str) -> fx.Node:
    """The graph node whose value is the output of module ``layer`` (a leaf or a container)."""
    last = None
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == layer:
            return node
        stack = node.meta.get("nn_module_stack") or {}
        paths = [v[0] if isinstance(v, tuple) else v for v in stack.values()]
        paths += list(stack.keys())
        if any(p == layer for p in paths):
            last = node
    if last is None:
        raise MethodError(
            f"layer {layer!r} has no node in the traced graph; pick a layer that runs in forward"
        )
    return last


def receptive_field(
    model: nn.Module, layer: str, input_size: tuple[int, int] | None = None
) -> ReceptiveField:
    """The exact receptive field of the units of ``layer``.

    Args:
        model: a network traceable by ``torch.fx``.
        layer: dotted module name (a leaf or a container such as ``layer2``).
        input_size: (H, W); used only to decide whether an adaptive pool is the identity.

    Raises:
        MethodError: the path holds an operation whose receptive field is not a fixed box.
    """
    (layer,) = resolve_layers(model, layer)[:1]
    gm = _trace(model)
    target = _layer_node(gm, layer)
    modules = dict(gm.named_modules())
    shapes = _LazyShapes(gm, model, input_size)  # a forward pass only if an adaptive pool needs it
    geom: dict[fx.Node, _Geom | None] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            geom[node] = ((1, 0, 1), (1, 0, 1))
            continue
        ins = [a for a in node.all_input_nodes if geom.get(a) is not None]
        if node.op in ("get_attr", "output") or not ins:
            geom[node] = None
            if node is target:
                break
            continue
        blocked = [geom[a] for a in ins if isinstance(geom[a], _Blocked)]
        if blocked:
            geom[node] = blocked[0]  # type: ignore[assignment]
            if node is target:
                break
            continue
        try:
            geom[node] = _node_geom(node, ins, geom, modules, shapes)
        except MethodError:
            geom[node] = _Blocked(node)  # type: ignore[assignment]
        if node is target:
            break
    g = geom.get(target)
    if isinstance(g, _Blocked):
        raise MethodError(g.message())
    if g is None:
        raise MethodError(f"layer {layer!r} does not depend on the input")
    return ReceptiveField((g[0][0], g[1][0]), (g[0][1], g[1][1]), (g[0][2], g[1][2]))


class _LazyShapes:
    """Spatial output sizes of the graph's nodes, computed on first use."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, size: tuple[int, int] | None) -> None:
        self.gm, self.model, self.size = gm, model, size
        self._shapes: dict[fx.Node, Any] | None = None

    def get(self, node: Any) -> Any:
        if self.size is None:
            return None
        if self._shapes is None:
            self._shapes = _spatial_shapes(self.gm, self.model, self.size)
        return self._shapes.get(node)


class _Blocked:
    def __init__(self, node: fx.Node) -> None:
        self.node = node

    def message(self) -> str:
        what = self.node.target if self.node.op != "call_module" else self.node.target
        return (
            f"no exact receptive field past {what!s} ({self.node.op}); receptive fields are "
            "computed for conv/pool stacks (pick an earlier layer)"
        )


def _spatial_shapes(gm: fx.GraphModule, model: nn.Module, size: tuple[int, int]) -> dict[fx.Node, Any]:
    from torch.fx.passes.shape_prop import ShapeProp

    p = next(model.parameters(), None)
    c = 3
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            c = m.in_channels
            break
    x = torch.zeros(1, c, *size, device=p.device if p is not None else "cpu")
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    out = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        out[n] = (
            tuple(tm.shape[-2:]) if tm is not None and hasattr(tm, "shape") and len(tm.shape) == 4 else None
        )
    return out


def _node_geom(
    node: fx.Node,
    ins: list[fx.Node],
    geom: dict[fx.Node, Any],
    modules: dict[str, nn.Module],
    shapes: Any,
) -> _Geom:
    gs = [geom[a] for a in ins]
    if any(isinstance(g, _Blocked) for g in gs):
        raise MethodError("blocked")
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.Conv2d):
            return _apply(
                gs[0],
                m.kernel_size,
                m.stride,
                m.padding if not isinstance(m.padding, str) else _same_pad(m),
                m.dilation,
            )
        if isinstance(m, nn.MaxPool2d):
            return _apply(gs[0], m.kernel_size, m.stride, m.padding, m.dilation)
        if isinstance(m, nn.AvgPool2d):
            return _apply(
                gs[0], m.kernel_size, m.stride if m.stride is not None else m.kernel_size, m.padding, 1
            )
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            src = shapes.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            if src is not None and shapes.get(node) == src:
                return gs[0]
            raise MethodError("adaptive pooling")
        if isinstance(m, _POINTWISE_MODULES):
            return _union(gs)
        raise MethodError(type(m).__name__)
    if node.op == "call_function":
        if node.target in _POINTWISE_FUNCS:
            return _union(gs)
        if node.target is F.max_pool2d or node.target is F.avg_pool2d:
            kw = dict(node.kwargs)
            args = list(node.args[1:])
            names = ["kernel_size", "stride", "padding"] + (
                ["dilation"] if node.target is F.max_pool2d else []
            )
            for nm, v in zip(names, args, strict=False):
                kw.setdefault(nm, v)
            k = kw["kernel_size"]
            s = kw.get("stride") or k
            return _apply(gs[0], k, s, kw.get("padding", 0), kw.get("dilation", 1))
        raise MethodError(str(node.target))
    if node.op == "call_method" and node.target in _POINTWISE_METHODS:
        return _union(gs)
    raise MethodError(str(node.target))


def _same_pad(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding == "valid":
        return (0, 0)
    k, d = _pair(m.kernel_size), _pair(m.dilation)
    return ((d[0] * (k[0] - 1)) // 2, (d[1] * (k[1] - 1)) // 2)
