"""Occlusion (Zeiler and Fergus 2014) on the batched engine, by incremental inference by default.

Slide a ``window`` with ``stride`` over the image, replace it by the ``baseline`` and watch the
target score ``S``: ``M_p = mean over windows w containing p of (S(x) - S(x with w hidden))``.
Signed. ``incremental="auto"`` (default) computes the map by incremental exact inference (Krypton,
Nakandala et al. 2019; :mod:`._incremental`) wherever the model traces with ``torch.fx`` and no
full-pass speed option was asked for, and falls back to one full pass per window otherwise;
``diagnostics["engine"]["incremental"]`` says which ran.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from convscope.core.errors import InputError, MethodError
from convscope.core.validate import ints, reals
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._engine import (
    AUTO,
    ENGINE_CHOICES,
    ENGINE_RANGES,
    SCORES,
    Engine,
    with_engine,
)
from convscope.methods.attribution._incremental import IncrementalOcclusion, _pair
from convscope.methods.registry import CueClaim, register
from convscope.models.inputs import BASELINES

__all__ = ["box_masks", "occlusion", "window_boxes"]

#: windows per pass of incremental occlusion with ``eval_batch_size="auto"`` (its boxes are
#: small, so the memory budget of full passes does not apply)
INCREMENTAL_BATCH = 64


def _starts(size: int, window: int, stride: int, cover: bool) -> list[int]:
    s = list(range(0, max(size - window, 0) + 1, stride))
    if cover and s[-1] + window < size:
        s.append(size - window)
    return s


def window_boxes(
    size: tuple[int, int],
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    *,
    cover: bool = True,
) -> torch.Tensor:
    """Top-left corners of sliding windows over an image.

    Windows start at 0, stride, 2*stride, ...; with ``cover`` a last window flush with the
    bottom/right edge is added when the stride would leave pixels never occluded.

    Returns:
        (n, 2) long tensor of (row, col), row-major.
    """
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    h, w = size
    if not (1 <= wh <= h and 1 <= ww <= w) or sh < 1 or sw < 1:
        raise InputError(
            f"occlusion window {wh}x{ww} with stride {sh}x{sw} does not fit a {h}x{w} input; the "
            "window must be at least 1 and at most the image, the stride at least 1"
        )
    rows = torch.tensor(_starts(h, wh, sh, cover))
    cols = torch.tensor(_starts(w, ww, sw, cover))
    return torch.cartesian_prod(rows, cols).view(-1, 2)


def box_masks(corners: torch.Tensor, window: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Boolean masks, true inside each window.

    Shape:
        corners (n, 2) -> (n, H, W) bool.
    """
    h, w = size
    dev = corners.device
    r = torch.arange(h, device=dev).view(1, h, 1)
    c = torch.arange(w, device=dev).view(1, 1, w)
    r0 = corners[:, 0].view(-1, 1, 1)
    c0 = corners[:, 1].view(-1, 1, 1)
    return (r >= r0) & (r < r0 + window[0]) & (c >= c0) & (c < c0 + window[1])


@register(
    "occlusion",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    signed=True,
    summary="how much the class score drops when a sliding window hides each region (averaged "
    "over the windows covering a pixel)",
    caveats="depends on window size and baseline; blind to evidence smaller than the window or "
    "spread over several windows; one model pass per window (less by incremental inference)",
    reference="Zeiler and Fergus 2014, Visualizing and Understanding Convolutional Networks",
    fast_options={"window": 8, "stride": 8},
    ranges={**ENGINE_RANGES, "window": ints(1), "stride": ints(1), "baseline": reals(0, 1),
            "sigma": reals(0, lo_open=True), "tau": reals(0, 1, lo_open=True)},
    choices={**ENGINE_CHOICES, "baseline": (AUTO, *BASELINES), "score": SCORES,
             "incremental": ("auto", "exact", "approx")},
    claims=(
        CueClaim(n=16, at_least=0.8, options={'window': 8, 'stride': 4}, measured=0.94),
    ),
)
@with_engine
def occlusion(
    ctx: MethodContext,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    baseline: str | float | torch.Tensor = "grey",
    sigma: float = 5.0,
    score: str = "raw",
    incremental: bool | str = "auto",
    tau: float = 0.5,
    engine: Engine = Engine(),
) -> MethodOutput:
    """Occlusion sensitivity.

    Args:
        window: window height/width in pixels (default: an eighth of the shorter side).
        stride: step between windows (default: half the window). A last window flush with the
            right/bottom edge is added so every pixel is covered.
        baseline: what replaces the window, in pixel space whatever the model's normalisation
            (:func:`convscope.models.inputs.baseline`): ``"grey"`` (default, pixels 0.5), ``"black"``,
            ``"white"``, ``"mean"`` (the image's mean colour), ``"blur"`` (Gaussian of ``sigma``
            px), a grey level in [0, 1], or a model-space tensor broadcastable to the input.
        sigma: blur width for ``baseline="blur"``.
        score: ``"raw"`` (logit drop) or ``"softmax"`` (probability drop).
        incremental: ``"auto"`` (default: exact incremental inference where the model traces
            and neither ``channels_last=True`` nor ``compile`` is asked for, else full passes),
            ``False`` (one full pass per window), ``"exact"`` or ``True`` (incremental inference on cached
            clean activations, same map up to float rounding; an error if the model does not
            trace) or ``"approx"`` (Krypton's projective-field cap ``tau``; faster, approximate).
        tau: the cap of ``"approx"`` as a fraction of each layer's height and width.

    Shape:
        map (B, H, W): mean score drop of the windows covering each pixel (signed).
    """
    incremental = "exact" if incremental is True else incremental
    if incremental not in (False, None, "auto", "exact", "approx"):
        raise InputError(f"incremental must be 'auto', False, 'exact' or 'approx', got {incremental!r}")
    eng = engine
    black_box = ctx.predict is not None or ctx.model is None
    if incremental in ("exact", "approx"):
        if black_box:
            raise MethodError("incremental occlusion needs a torch model, not a black box")
        if eng.speed_options:
            raise InputError("channels_last and compile apply to full passes, not to incremental "
                             "occlusion; drop them or use incremental=False")
    args: dict[str, Any] = {"window": window, "stride": stride, "baseline": baseline, "sigma": sigma,
                            "score": score, "tau": tau}
    if incremental == "auto":
        if black_box or eng.speed_options:
            return _occlusion(ctx, eng, None, **args)
        try:
            return _occlusion(ctx, eng, "exact", **args)
        except Exception:  # the model does not trace, or has a node the incremental engine cannot
            return _occlusion(ctx, eng, None, **args)  # run: full passes (which raise a real error)
    return _occlusion(ctx, eng, incremental or None, **args)


def _occlusion(ctx: MethodContext, eng: Engine, incremental: str | None, *,
               window: int | tuple[int, int] | None, stride: int | tuple[int, int] | None,
               baseline: str | float | torch.Tensor, sigma: float, score: str, tau: float) -> MethodOutput:
    B, C, H, W = ctx.x.shape
    win = window if window is not None else max(1, min(H, W) // 8)
    wh, ww = _pair(win)
    st = stride if stride is not None else max(1, min(wh, ww) // 2)
    corners = window_boxes((H, W), (wh, ww), st).to(ctx.x.device)
    n = corners.shape[0]
    inc: IncrementalOcclusion | None = None
    if incremental:
        assert ctx.model is not None
        cap = None if incremental == "exact" else tau
        inc = IncrementalOcclusion(ctx.model, ctx.x[:1], tau=cap)  # traces first: fails early
        eng = dataclasses.replace(eng, channels_last=False, eval_batch_size=eng.eval_batch_size
                                  if eng.eval_batch_size != "auto" else INCREMENTAL_BATCH)
    run = eng.start(ctx, n_evals=n, desc="occlusion")
    run.incremental = bool(incremental)
    counts = torch.zeros(H * W, device=ctx.x.device)
    for start in range(0, n, 4096):
        counts += box_masks(corners[start:start + 4096], (wh, ww), (H, W)).flatten(1).float().sum(0)
    rows = torch.arange(wh, device=ctx.x.device)
    cols = torch.arange(ww, device=ctx.x.device)
    maps = []
    for b in range(B):
        xb = ctx.x[b]
        base = run.baseline(b, baseline, score, sigma=sigma)
        sc = run.scorer(b, score)
        if inc is not None:
            if b > 0:
                inc = IncrementalOcclusion(ctx.model, xb[None], tau=inc.tau)  # type: ignore[arg-type]

            def make_inc(a: int, z: int, base: torch.Tensor = base) -> tuple[torch.Tensor, torch.Tensor]:
                c = corners[a:z]
                r_ = c[:, 0, None, None] + rows[None, :, None]
                c_ = c[:, 1, None, None] + cols[None, None, :]
                return base[:, r_, c_].permute(1, 0, 2, 3), c

            scores = run.evaluate(make_inc, n, sc, predict=lambda vc, inc=inc: inc.scores(*vc))
        else:
            def make(a: int, z: int, xb: torch.Tensor = xb, base: torch.Tensor = base) -> torch.Tensor:
                m = box_masks(corners[a:z], (wh, ww), (H, W))[:, None]
                return torch.where(m, base, xb)

            scores = run.evaluate(make, n, sc)
        drops = run.clean_score(b, score) - scores
        acc = torch.zeros(H * W, device=ctx.x.device)
        for start in range(0, n, 4096):
            m = box_masks(corners[start:start + 4096], (wh, ww), (H, W)).flatten(1).float()
            acc += drops[start:start + 4096] @ m
        maps.append((acc / counts.clamp(min=1)).view(H, W))
    return run.output(maps, windows=n, window=[wh, ww], stride=st if isinstance(st, int) else list(st))
