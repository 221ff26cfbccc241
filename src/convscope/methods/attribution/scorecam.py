"""Score-CAM and Ablation-CAM: CAMs whose channel weights come from perturbed model passes.

* **scorecam** (Wang et al., "Score-CAM", CVPR-W 2020): every channel ``A_k`` of the layer,
  upsampled and min-max normalised to ``H_k``, masks the input; ``alpha = softmax_k(S(x * H_k))``
  (``weights="softmax"``, the paper's Algorithm 1) or the increase in confidence
  ``p(x * H_k) - p(baseline)`` (``weights="increase"``); ``M = ReLU(sum_k alpha_k A_k)``.
* **ablationcam** (Desai and Ramaswamy, "Ablation-CAM", WACV 2020): ``w_k = (S - S_k) / S`` with
  ``S_k`` the score when channel ``k`` of the layer is set to zero; ``M = ReLU(sum_k w_k A_k)``.
  Only the part of the network after the layer runs for the ablations (traced with
  ``torch.fx``; a model fx cannot trace falls back to full passes with the layer's output
  replaced through :func:`convscope.core.hooks.capture`).

Both run their passes on the perturbation engine (:mod:`._engine`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from convscope.core.errors import InputError, MethodError
from convscope.core.validate import reals
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._cam_engine import capture_layers, layer_pass
from convscope.methods.attribution._engine import ENGINE_CHOICES, ENGINE_RANGES, Engine, with_engine
from convscope.methods.attribution._tail import layer_tail
from convscope.methods.registry import CueClaim, register
from convscope.models.inputs import BASELINES
from convscope.models.inputs import baseline as make_baseline

__all__ = ["ablationcam", "scorecam"]

#: channels per tail pass of Ablation-CAM with ``eval_batch_size="auto"`` (full passes: 32)
TAIL_BATCH = 256


def _one_layer(ctx: MethodContext, name: str) -> str:
    if len(ctx.layer) != 1:
        raise MethodError(f"{name} works on one layer; got {len(ctx.layer)}: {', '.join(ctx.layer)}")
    return ctx.layer[0]


def _activations(ctx: MethodContext, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activations and the outputs, chunk by chunk: the CAM engine's pass without
    gradients (:func:`~._cam_engine.layer_pass`, shared with CAM and Eigen-CAM in a report)."""
    acts, logits = [], []
    for r in ctx.chunks():
        p = layer_pass(ctx, r, need_grad=False)
        a = p.acts[0]
        if a.ndim != 4:
            raise MethodError(
                f"layer {layer!r} gives a {a.ndim}-D output {tuple(a.shape)}; Score-CAM and "
                "Ablation-CAM need a (B, C, h, w) convolutional layer"
            )
        acts.append(a)
        logits.append(p.out)
    return torch.cat(acts), torch.cat(logits)


@register(
    "scorecam",
    family="cam",
    needs_layer=True,
    needs_gradients=False,
    summary="the layer's channels weighted by the class score of the image masked with each "
    "(upsampled, normalised) channel",
    caveats="one model pass per channel; coarse (the layer's resolution); blind to channels "
    "that only matter together",
    reference="Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for Convolutional "
    "Neural Networks",
    ranges={**ENGINE_RANGES, "baseline": reals(0, 1)},
    choices={**ENGINE_CHOICES, "baseline": tuple(BASELINES), "weights": ("softmax", "increase")},
    claims=(
        CueClaim(n=16, at_least=0.8, measured=0.94),
    ),
)
@with_engine
def scorecam(
    ctx: MethodContext,
    weights: str = "softmax",
    baseline: str | float | torch.Tensor = "black",
    engine: Engine = Engine(),
) -> MethodOutput:
    """Score-CAM.

    Args:
        weights: ``"softmax"``: softmax over channels of the target logit of each masked image
            (the paper's Algorithm 1, as pytorch-grad-cam); ``"increase"``: increase of the
            target probability over the baseline image (the paper's eq. 5).
        baseline: what shows through where a mask is 0 (see :func:`occlusion`); default black
            pixels, i.e. the input multiplied by the mask in pixel space (the paper's x * H_k).

    Shape:
        map (B, h, w) at the layer's resolution (the facade upsamples).
    """
    if weights not in ("softmax", "increase"):
        raise InputError(f"unknown weights {weights!r}; use 'softmax' or 'increase'")
    layer = _one_layer(ctx, "scorecam")
    acts, logits = _activations(ctx, layer)
    run = engine.start(
        ctx, n_evals=acts.shape[1], desc="scorecam", logits=logits)
    B, C, H, W = ctx.x.shape
    maps = []
    for b in range(B):
        a = acts[b]
        up = F.interpolate(a[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        lo = up.flatten(1).amin(1).view(-1, 1, 1)
        hi = up.flatten(1).amax(1).view(-1, 1, 1)
        masks = (up - lo) / (hi - lo).clamp(min=1e-12)
        xb = ctx.x[b]
        base = make_baseline(xb, baseline, ctx.preprocessing)

        def make(s: int, e: int, masks: torch.Tensor = masks, xb: torch.Tensor = xb,
                 base: torch.Tensor = base) -> torch.Tensor:
            return base + masks[s:e, None] * (xb - base)

        if weights == "softmax":
            alpha = torch.softmax(run.evaluate(make, a.shape[0], run.scorer(b, "raw")), 0)
        else:
            sc = run.scorer(b, "softmax")
            alpha = run.evaluate(make, a.shape[0], sc) - sc(run.predict(base[None]))[0]
        maps.append(torch.relu((alpha.view(-1, 1, 1) * a).sum(0)))
    return run.output(maps)


@register(
    "ablationcam",
    family="cam",
    needs_layer=True,
    needs_gradients=False,
    summary="the layer's channels weighted by how much the class score falls when each channel "
    "is switched off",
    caveats="one pass of the network after the layer per channel; coarse; misses channels that "
    "are redundant with others",
    reference="Desai and Ramaswamy 2020, Ablation-CAM: Visual Explanations for Deep "
    "Convolutional Network via Gradient-free Localization",
    ranges=ENGINE_RANGES,
    choices=ENGINE_CHOICES,
    claims=(
        CueClaim(n=16, at_least=0.9, measured=1.0),
    ),
)
@with_engine
def ablationcam(
    ctx: MethodContext,
    engine: Engine = Engine(),
) -> MethodOutput:
    """Ablation-CAM: ``w_k = (S - S_k) / S``, ``M = ReLU(sum_k w_k A_k)``.

    Only the network after the layer runs for the ablated activations when ``torch.fx`` can
    trace the model (``diagnostics["tail_only"]``); otherwise each ablation is a full pass with
    the layer's output replaced (:func:`convscope.core.hooks.capture` with ``replace``).

    Args:

    Shape:
        map (B, h, w) at the layer's resolution (the facade upsamples).
    """
    assert ctx.model is not None
    layer = _one_layer(ctx, "ablationcam")
    acts, logits = _activations(ctx, layer)
    K = acts.shape[1]
    eng = engine
    tail = layer_tail(ctx.model, layer)
    if tail is not None:  # the tail shares the model's parameters: the engine runs the tail module
        with torch.no_grad():
            act0, extra0 = tail.head(ctx.x[:1])
        run = eng.start(ctx, n_evals=K, desc="ablationcam", logits=logits, fn=tail.module, sample=act0,
                        call=lambda p, c: dataclasses.replace(tail, module=p)(c, extra0),
                        default_batch=TAIL_BATCH)
        tail_run = dataclasses.replace(tail, module=run.predict)
    else:
        if eng.compile is not False:
            warnings.warn("ablationcam: the model cannot be traced, so each ablation is a full pass "
                          "with the layer's output replaced; compile is not used there (running eagerly)",
                          RuntimeWarning, stacklevel=2)
            eng = dataclasses.replace(eng, compile=False)
        run = eng.start(ctx, n_evals=K, desc="ablationcam", logits=logits, default_batch=32)
    maps = []
    for b in range(ctx.x.shape[0]):
        a = acts[b]
        sc = run.scorer(b, "raw")
        s0 = run.clean_score(b)
        eye = torch.eye(K, device=a.device, dtype=a.dtype)

        def ablated(s: int, e: int, a: torch.Tensor = a, eye: torch.Tensor = eye) -> torch.Tensor:
            return a[None] * (1 - eye[s:e])[:, :, None, None]

        if tail is not None:
            with torch.no_grad():
                _act, extra = tail.head(ctx.x[b:b + 1])

            def run_tail(acts_: torch.Tensor, extra: list[Any] = extra) -> torch.Tensor:
                return tail_run(acts_, extra)

            with run.predict.prepared():
                s = run.evaluate(ablated, K, sc, predict=run_tail)
        else:
            def run_full(acts_: torch.Tensor, b: int = b) -> torch.Tensor:
                xs = ctx.x[b:b + 1].expand(acts_.shape[0], *ctx.x.shape[1:])
                with capture_layers(ctx, layer, clone=False, replace={layer: lambda _o: acts_}):
                    return run.predict(xs)

            with run.predict.prepared():
                s = run.evaluate(ablated, K, sc, predict=run_full)
        den = s0 if float(s0.abs()) > 1e-12 else torch.full_like(s0, 1e-12)
        w = (s0 - s) / den
        maps.append(torch.relu((w.view(-1, 1, 1) * a).sum(0)))
    return run.output(maps, tail_only=tail is not None)
