"""The network above a layer as a function (Ablation-CAM's tail): the model traced with torch.fx,
the layer's activation swapped for a batch of edited ones, everything else computed once."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[Any, fx.GraphModule | None]] = weakref.WeakKeyDictionary()

__all__ = ["Tail", "layer_tail"]


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


#: traced graphs per model by leaves and submodule identities (a swapped layer retraces)


#: fx patches ``nn.Module.__call__`` while it traces: one trace at a time in this process
_TRACE_LOCK = threading.Lock()


def _trace(model: nn.Module, leaves: set[str] | None = None) -> fx.GraphModule | None:
    """``model`` traced by ``torch.fx`` with ``leaves`` kept as calls, or ``None`` if it cannot be
    traced; cached per model (the graph shares the model's modules and parameters)."""
    key = (frozenset(leaves or ()), tuple((n, id(m)) for n, m in model.named_modules()))
    with _TRACE_LOCK:
        cache = _TRACES.setdefault(model, {})
        if key not in cache:
            try:
                cache[key] = fx.GraphModule(model, _LeafTracer(leaves or set()).trace(model))
            except Exception:  # any tracing failure means: use the fallback
                cache[key] = None
        return cache[key]


@dataclass
class Tail:
    """The network after ``layer``.

    Attributes:
        module: ``module(layer_output, *extra)`` -> model output (the traced tail, or a
            :class:`~convscope.engines.perturb.Predictor` around it).
        head: ``head(x)`` -> (layer output, extra values) for a clean input.
        expand_extra: per extra value, whether it carries the batch dimension.
    """

    module: fx.GraphModule | Callable[..., Any]
    head: Callable[[torch.Tensor], tuple[torch.Tensor, list[Any]]]
    expand_extra: list[bool]

    def __call__(self, act: torch.Tensor, extra: list[Any]) -> torch.Tensor:
        n = act.shape[0]
        args = [
            v.expand(n, *v.shape[1:]) if (exp and isinstance(v, torch.Tensor) and v.shape[0] == 1) else v
            for v, exp in zip(extra, self.expand_extra, strict=True)
        ]
        return self.module(act, *args)


def layer_tail(model: nn.Module, layer: str) -> Tail | None:
    """The tail of ``model`` after ``layer``, or ``None`` when the model cannot be traced or the
    layer is not called exactly once."""
    gm = _trace(model, {layer})
    if gm is None:
        return None
    nodes = list(gm.graph.nodes)
    hits = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(hits) != 1:
        return None
    li = hits[0]
    lnode = nodes[li]
    before = set(nodes[:li])
    extra: list[fx.Node] = []
    for n in nodes[li + 1:]:
        for a in n.all_input_nodes:
            if a in before and a not in extra:
                extra.append(a)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {lnode: g.placeholder("layer_out")}
    for i, a in enumerate(extra):
        env[a] = g.placeholder(f"extra_{i}")
    for n in nodes[li + 1:]:
        env[n] = g.node_copy(n, lambda a: env[a])
    tail = fx.GraphModule(gm, g)
    last = max([li] + [nodes.index(a) for a in extra])
    head_nodes = nodes[: last + 1]
    hg = fx.Graph()
    henv: dict[fx.Node, fx.Node] = {}
    for n in head_nodes:
        henv[n] = hg.node_copy(n, lambda a: henv[a])
    hg.output(tuple(henv[n] for n in [lnode, *extra]))
    head_gm = fx.GraphModule(gm, hg)

    def head(x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        out = head_gm(x)
        return out[0], list(out[1:])

    expand = [a.op != "get_attr" for a in extra]
    return Tail(tail, head, expand)


# ---------------------------------------------------------------------------------------------
# Incremental occlusion (Krypton)
