"""The engine of the CAM family (:mod:`convscope.methods.attribution.cam` holds the weight rules).

:func:`cam_engine` gets, for each chunk of ``ctx.batch_size`` samples, one :class:`_LayerPass`:
the model run once with the layer(s) captured by :func:`convscope.core.hooks.capture`, and (for the
gradient CAMs) ``G = dS/dA``, the gradient of the target score ``S`` with respect to the captured
activations ``A`` only, by ``torch.autograd.grad``. The network below the layer runs without an
autograd graph (:meth:`convscope.core.hooks.Capture.run_above`: ``no_grad`` until the first captured
layer, whose output becomes a leaf that requires grad), and the weights are frozen (the facade's
state guard), so the pass costs one forward plus the backward of the few layers above: nothing
below the layer and no weight gradient is computed or stored. Where a captured layer is not
reachable from the first one (several layers on parallel branches) or the score does not depend
on a layer, the pass is made again with a graph from the input (which also words the error).

The pass does not depend on the weight rule, nor on the ``layout`` option (applied afterwards to
the stored activations), so inside :func:`~convscope.methods.attribution._shared.shared_work` every CAM
on the same model, images, layers and target reuses it: one pass with gradients serves Grad-CAM,
Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM and guided Grad-CAM, and a pass without gradients (or
that one) serves CAM and Eigen-CAM.

Each rule then turns a :class:`LayerData` into a map (b, h, w) at the layer's resolution, which
is rectified and upsampled bilinearly (``align_corners=False``) to the input size; several layers
are combined as the :mod:`~convscope.methods.attribution.cam` docstring says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convscope.core.errors import MethodError
from convscope.core.hooks import capture
from convscope.core.targets import ResolvedTarget
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._shared import shared, target_key
from convscope.models.tokens import grid_layout, to_grid, zero_token_gradient

__all__ = ["LayerData", "Rule", "cam_engine", "capture_layers", "layer_pass", "layer_pass_parts"]

_EPS = 1e-12


@dataclass
class LayerData:
    """What a weight rule sees for one layer and one chunk of the batch.

    Attributes:
        name: the dotted layer name.
        act: activations A, (b, K, h, w) (token and channels-last layouts already reshaped).
        grad: dS/dA of the same shape, or ``None`` for rules that need no gradient.
        logits: (b, n_classes) model outputs (detached).
        logit_grad: dS/dlogits (b, n_classes), for rules that asked for it, else ``None``.
        module: the layer's module; ``model``: the whole network.
    """

    name: str
    act: torch.Tensor
    grad: torch.Tensor | None
    logits: torch.Tensor
    logit_grad: torch.Tensor | None
    module: nn.Module
    model: nn.Module


Rule = Callable[[LayerData], torch.Tensor]


@dataclass
class _LayerPass:
    """One chunk's forward (and backward) pass at the layers: everything but the rule.

    Attributes:
        out: (b, n_classes) outputs, detached.
        acts: each layer's output as the layer gave it (before the grid reshape), detached.
        grads: dS/dA per layer, or ``None`` each for a pass without gradients.
        modules: the layers' modules.
        target: the resolved target of the chunk.
    """

    out: torch.Tensor
    acts: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    modules: list[nn.Module]
    target: ResolvedTarget


def capture_layers(ctx: MethodContext, layers: str | list[str] | None = None, **options: Any) -> Any:
    """:func:`~convscope.core.hooks.capture` of ``layers`` (default ``ctx.layer``; ``options`` as
    for ``capture``) that leaves modes and flags alone: a method runs inside the facade's state
    guard, which holds the model in eval mode with frozen weights for the whole call and restores it
    (:class:`MethodContext`), so a second guard per chunk would only walk the model again."""
    assert ctx.model is not None
    return capture(ctx.model, ctx.layer if layers is None else layers, eval_mode=False, freeze=False,
                   restore=False, **options)


def _pass_above(ctx: MethodContext, rows: slice) -> _LayerPass | None:
    """The gradient pass with a graph above the layers only (:meth:`~convscope.core.hooks.Capture.
    run_above`), or ``None`` where it cannot serve: a layer beside the path of the first one, or
    a score that does not depend on a layer (the full pass then gives the error message)."""
    assert ctx.model is not None
    with capture_layers(ctx) as cap:
        out = cap.run_above(ctx.x[rows].detach())
        acts = [cap.activation(n) for n in ctx.layer]
        modules = [cap.modules[n] for n in ctx.layer]
    if not isinstance(out, torch.Tensor):
        raise MethodError(f"the model returned {type(out).__name__}; CAM methods need a logits tensor")
    with torch.enable_grad():
        s, t = ctx.scores(out, rows)
    if not s.requires_grad or not all(a.requires_grad for a in acts):
        return None
    got = torch.autograd.grad(s.sum(), acts, allow_unused=True)
    if any(g is None for g in got):
        return None
    return _LayerPass(out.detach(), [a.detach() for a in acts], [g.detach() for g in got], modules, t)


def _layer_pass(ctx: MethodContext, rows: slice, need_grad: bool) -> _LayerPass:
    """Run the model on ``ctx.x[rows]`` with ``ctx.layer`` captured; with ``need_grad``, the
    gradient of the target score with respect to each layer's output (by :func:`_pass_above`
    where it serves, else through a graph from the input)."""
    assert ctx.model is not None
    xb = ctx.x[rows].detach()
    if need_grad:
        above = _pass_above(ctx, rows)
        if above is not None:
            return above
        xb.requires_grad_(True)
    with capture_layers(ctx) as cap:
        with torch.set_grad_enabled(need_grad):
            out = ctx.model(xb)
            acts = [cap.activation(n) for n in ctx.layer]
        modules = [cap.modules[n] for n in ctx.layer]
    if not isinstance(out, torch.Tensor):
        raise MethodError(f"the model returned {type(out).__name__}; CAM methods need a logits tensor")
    s, t = ctx.scores(out, rows)
    grads: list[torch.Tensor | None] = [None] * len(acts)
    if need_grad:
        missing = [n for n, a in zip(ctx.layer, acts, strict=True) if not a.requires_grad]
        if missing:
            raise MethodError(f"layer(s) {', '.join(missing)} do not depend on the input")
        got = torch.autograd.grad(s.sum(), acts, allow_unused=True)
        for i, (n, g) in enumerate(zip(ctx.layer, got, strict=True)):
            if g is None:
                raise MethodError(
                    f"the target score does not depend on layer {n!r}; pick a layer on the "
                    "path to the output"
                )
            grads[i] = g.detach()
    return _LayerPass(out.detach(), [a.detach() for a in acts], grads, modules, t)


def layer_pass_parts(ctx: MethodContext, rows: slice, need_grad: bool) -> tuple[Any, ...] | None:
    """The shared-work key of :func:`layer_pass` for ``rows`` (``None``: not shared)."""
    tk = target_key(ctx.target, ctx.class_names)
    return None if tk is None else ("layer_pass", rows.start, rows.stop, tuple(ctx.layer), tk, need_grad)


def layer_pass(ctx: MethodContext, rows: slice, need_grad: bool) -> _LayerPass:
    """:func:`_layer_pass`, shared within a :func:`~convscope.methods.attribution._shared.shared_work`
    block; a request without gradients is also served by a pass with them."""
    assert ctx.model is not None
    parts = layer_pass_parts(ctx, rows, need_grad)
    if parts is None:
        return _layer_pass(ctx, rows, need_grad)
    return shared(parts, ctx.model, ctx.x, lambda: _layer_pass(ctx, rows, need_grad),
                  also=() if need_grad else ((*parts[:-1], True),))


def _upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def cam_engine(
    ctx: MethodContext,
    rule: Rule,
    *,
    need_grad: bool = True,
    need_logit_grad: bool = False,
    layout: str = "auto",
) -> MethodOutput:
    """Run ``rule`` on every layer of ``ctx.layer``; see the module docstring.

    Args:
        ctx: the method context; ``ctx.layer`` lists one or more layers.
        rule: ``LayerData -> (b, h, w)`` map before rectification.
        need_grad: compute dS/dA (one backward pass that stops at the shallowest layer).
        need_logit_grad: compute dS/dlogits instead (CAM): no backward through the network.
        layout: how to read the layer outputs (see :mod:`convscope.models.tokens`).

    Shape:
        map (B, H, W) at the input resolution; raw (B, L, H, W) per-layer maps.
    """
    assert ctx.model is not None
    if not ctx.layer:
        raise MethodError("CAM methods need a layer; pass layer= (run `convscope layers MODEL`)")
    size = (int(ctx.x.shape[-2]), int(ctx.x.shape[-1]))
    per_layer: list[list[torch.Tensor]] = [[] for _ in ctx.layer]
    logits_all: list[torch.Tensor] = []
    targets: list[int | None] = []
    shapes: dict[str, list[int]] = {}
    layouts: dict[str, str] = {}
    for rows in ctx.chunks():
        p = layer_pass(ctx, rows, need_grad)
        logit_grad = None
        if need_logit_grad:
            leaf = p.out.detach().requires_grad_(True)
            with torch.enable_grad():
                s, _ = ctx.scores(leaf, rows)
                (logit_grad,) = torch.autograd.grad(s.sum(), leaf)
        grads = p.grads if need_grad else [None] * len(p.acts)
        for i, (name, a, ga, mod) in enumerate(zip(ctx.layer, p.acts, grads, p.modules, strict=True)):
            kind, h, w = grid_layout(tuple(a.shape), size, layout)
            layouts[name], shapes[name] = kind, [h, w]
            if ga is not None and kind in ("tokens", "cls_tokens") and not to_grid(ga, kind, h, w).any():
                raise MethodError(zero_token_gradient(ctx.model, name))
            data = LayerData(
                name=name,
                act=to_grid(a, kind, h, w).float(),
                grad=None if ga is None else to_grid(ga, kind, h, w).float(),
                logits=p.out,
                logit_grad=logit_grad,
                module=mod,
                model=ctx.model,
            )
            m = rule(data).clamp(min=0)
            per_layer[i].append(_upsample(m, size))
        logits_all.append(p.out)
        targets.extend(p.target.labels() or [None] * p.out.shape[0])
    raw = torch.stack([torch.cat(p) for p in per_layer], dim=1)
    if raw.shape[1] == 1:
        amap = raw[:, 0]
    else:
        peak = raw.flatten(2).amax(2).clamp(min=_EPS)[..., None, None]
        amap = (raw / peak).mean(1)
    diagnostics: dict[str, Any] = {
        "layers": list(ctx.layer),
        "layer_grid": shapes,
        "layer_layout": layouts,
    }
    if raw.shape[1] > 1:
        diagnostics["combine"] = "mean of per-layer maps, each divided by its per-sample maximum"
    return MethodOutput(map=amap, targets=targets, raw=raw, logits=torch.cat(logits_all),
                        diagnostics=diagnostics)
