"""Perturbation attributions on the batched engine (:mod:`convscope.perturb`).

All of them hide parts of the input (or of a layer's activations), run the model and watch the
target score ``S`` move. ``score="raw"`` reads the model's output as it is (logits for a torch
classifier, whatever a black box returns); ``score="softmax"`` reads its softmax probability. A
callable target always receives the raw outputs. Random methods draw from a generator seeded
with ``seed``, the same draws for every image of a batch, so a result does not depend on where an
image sits in its batch or on ``eval_batch_size`` (the chunk size of perturbed inputs through the
model; ``"auto"`` fits a memory budget).

* **occlusion** (Zeiler and Fergus 2014): slide a ``window`` with ``stride`` over the image,
  replace it by the ``baseline`` (pixel space: grey by default, black, white, the image mean, a
  blur, a grey level, or a model-space tensor);
  ``M_p = mean over windows w containing p of (S(x) - S(x with w hidden))``. Signed.
  ``incremental="exact"`` computes the same map by incremental inference (Krypton, Nakandala et
  al. 2019; see :mod:`._incremental`), ``incremental="approx"`` with a projective-field cap
  ``tau``.
* **rise** (Petsiuk, Das and Saenko, "RISE", BMVC 2018): ``N`` random masks, each a
  ``cells x cells`` Bernoulli(p) grid upsampled bilinearly and shifted at random;
  ``M = 1 / (N p) * sum_i S(x * m_i + b * (1 - m_i)) m_i``.
* **lime** (Ribeiro, Singh and Guestrin, "Why Should I Trust You?", KDD 2016): superpixels
  (scikit-image SLIC, quickshift, Felzenszwalb, a grid, or a user mask), samples ``z`` in
  {0, 1}^d hiding random sets of segments, weights ``pi(z) = sqrt(exp(-D(z, 1)^2 / width^2))``
  with ``D`` the cosine distance, and a weighted ridge fit ``S(z) ~ b + w . z``; the map paints
  each segment with its weight ``w``; the fit's weighted R^2 is ``diagnostics["local_r2"]``.
* **kernel_shap** (Lundberg and Lee, "A Unified Approach to Interpreting Model Predictions",
  NeurIPS 2017): the same segments; coalitions drawn from the Shapley kernel's size distribution
  and a least-squares fit constrained to ``sum(phi) = S(x) - S(baseline)``.
* **scorecam** (Wang et al., "Score-CAM", CVPR-W 2020): every channel ``A_k`` of the layer,
  upsampled and min-max normalised to ``H_k``, masks the input; ``alpha = softmax_k(S(x * H_k))``
  (``weights="softmax"``, the paper's Algorithm 1) or the increase in confidence
  ``p(x * H_k) - p(baseline)`` (``weights="increase"``); ``M = ReLU(sum_k alpha_k A_k)``.
* **ablationcam** (Desai and Ramaswamy, "Ablation-CAM", WACV 2020): ``w_k = (S - S_k) / S`` with
  ``S_k`` the score when channel ``k`` of the layer is set to zero; ``M = ReLU(sum_k w_k A_k)``.
  Only the part of the network after the layer runs for the ablations (traced with
  ``torch.fx``; a model fx cannot trace falls back to full passes with the layer's output
  replaced by a scoped hook).

``channels_last=True`` and ``compile=True`` (all six methods, torch modules only; a black box is
refused with an InputError) are speed options of the engine (:class:`~convscope.perturb.Predictor`):
the masked batches run in ``torch.channels_last`` memory format (the model's parameters and
buffers are converted for the passes and restored exactly afterwards) or through
``torch.compile`` (a wrapper; a string names the backend; if compiling fails the engine warns
once and runs eagerly). They never change a map beyond float rounding.

``converge=tol`` (RISE, LIME, Kernel SHAP) checks the estimate every ``check_every`` samples and
stops once the correlation between two successive estimates reaches ``1 - tol``;
``diagnostics["stability"]`` holds the last correlation, ``diagnostics["n_samples"]`` the number
of samples used.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .._validate import ints, reals
from ..errors import InputError, MethodError
from ..hooks import capture
from ..inputs import BASELINES
from ..inputs import baseline as make_baseline
from ..perturb import (
    Convergence,
    as_predict,
    box_masks,
    coalition_samples,
    evaluate,
    rise_masks,
    shapley_samples,
    weighted_ridge,
    window_boxes,
)
from ..registry import CueClaim, register
from ._base import MethodContext, MethodOutput

__all__ = [
    "ablationcam",
    "kernel_shap",
    "lime",
    "lime_picture",
    "occlusion",
    "rise",
    "scorecam",
    "segment",
]

_SCORES = ("raw", "softmax")

# Allowed option values, declared once per option (checked before any work, see registry).
_SAMPLES = ints(1, 1_000_000)
_ENGINE_RANGES = {"eval_batch_size": ints(1)}
_ENGINE_CHOICES = {"eval_batch_size": ("auto",)}
_BASELINES = tuple(BASELINES)  # the one vocabulary, in pixel space (convscope.inputs)
_SAMPLING_RANGES = {
    **_ENGINE_RANGES,
    "n_samples": _SAMPLES,
    "n_segments": ints(1, 100_000),
    "cell": ints(1),
    "hide": reals(0, 1),
    "converge": reals(0, 1, lo_open=True, hi_open=True),
    "check_every": ints(1),
}
_SAMPLING_CHOICES = {
    **_ENGINE_CHOICES,
    "segmentation": ("slic", "quickshift", "felzenszwalb", "grid"),
    "hide": ("segment_mean", *_BASELINES),
    "score": _SCORES,
}


def _predictor(ctx: MethodContext, channels_last: bool = False,
               compile: bool | str | Callable[..., Any] = False) -> Any:
    """The engine's predictor for ``ctx`` with the speed options (see :class:`Predictor`)."""
    if ctx.predict is not None:
        if channels_last or compile is not False:
            return as_predict(ctx.predict, channels_last=channels_last, compile=compile)  # refuses
        return ctx.predict
    assert ctx.model is not None
    return as_predict(ctx.model, channels_last=channels_last, compile=compile)


def _clean(ctx: MethodContext, predict: Any) -> tuple[torch.Tensor, Any, list[int | None]]:
    with torch.no_grad():
        logits = torch.cat([predict(ctx.x[r]) for r in ctx.chunks()])
    t = ctx.resolve(logits)
    labels = t.labels() or [None] * ctx.x.shape[0]
    return logits, t, labels


def _scorer(t: Any, b: int, score: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if score not in _SCORES:
        raise InputError(f"unknown score {score!r}; use 'raw' (model outputs) or 'softmax'")
    if t.func is not None:
        func = t.func
        return lambda o: func(o).reshape(-1)
    idx = int(t.indices[b])
    neg = None if t.negative is None else int(t.negative[b])
    if score == "softmax":
        if neg is not None:
            return lambda o: (lambda p: p[:, idx] - p[:, neg])(torch.softmax(o.float(), dim=1))
        return lambda o: torch.softmax(o.float(), dim=1)[:, idx]
    if neg is not None:
        return lambda o: (o[:, idx] - o[:, neg]).float()
    return lambda o: o[:, idx].float()


# ---------------------------------------------------------------------------------------------
# occlusion


@register(
    "occlusion",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    signed=True,
    summary="how much the class score drops when a sliding window hides each region (averaged "
    "over the windows covering a pixel)",
    caveats="depends on window size and baseline; blind to evidence smaller than the window or "
    "spread over several windows; one model pass per window",
    reference="Zeiler and Fergus 2014, Visualizing and Understanding Convolutional Networks",
    fast_options={"window": 8, "stride": 8},
    ranges={**_ENGINE_RANGES, "window": ints(1), "stride": ints(1), "baseline": reals(0, 1),
            "sigma": reals(0, lo_open=True), "tau": reals(0, 1, lo_open=True)},
    choices={**_ENGINE_CHOICES, "baseline": _BASELINES, "score": _SCORES,
             "incremental": ("exact", "approx")},
    claims=(
        CueClaim(n=16, at_least=0.8, options={'window': 8, 'stride': 4}, measured=0.94),
    ),
)
def occlusion(
    ctx: MethodContext,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    baseline: str | float | torch.Tensor = "grey",
    sigma: float = 5.0,
    score: str = "raw",
    incremental: bool | str = False,
    tau: float = 0.5,
    eval_batch_size: int | str = "auto",
    progress: bool | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
) -> MethodOutput:
    """Occlusion sensitivity.

    Args:
        window: window height/width in pixels (default: an eighth of the shorter side).
        stride: step between windows (default: half the window). A last window flush with the
            right/bottom edge is added so every pixel is covered.
        baseline: what replaces the window, in pixel space whatever the model's normalisation
            (:func:`convscope.inputs.baseline`): ``"grey"`` (default, pixels 0.5), ``"black"``,
            ``"white"``, ``"mean"`` (the image's mean colour), ``"blur"`` (Gaussian of ``sigma``
            px), a grey level in [0, 1], or a model-space tensor broadcastable to the input.
        sigma: blur width for ``baseline="blur"``.
        score: ``"raw"`` (logit drop) or ``"softmax"`` (probability drop).
        incremental: ``False`` (one full pass per window), ``"exact"`` (incremental inference on
            cached clean activations, same map up to float rounding) or ``"approx"`` (Krypton's
            projective-field cap ``tau``; faster, approximate). Needs a torch model fx can trace.
        tau: the cap of ``"approx"`` as a fraction of each layer's height and width.
        eval_batch_size: windows per model pass, or ``"auto"``.
        progress: show a progress bar (default: on long runs in a terminal).
        channels_last, compile: engine speed options for a torch model (see
            :class:`~convscope.perturb.Predictor`); same map up to float rounding.

    Shape:
        map (B, H, W): mean score drop of the windows covering each pixel (signed).
    """
    if incremental not in (False, "exact", "approx", None):
        raise InputError(f"incremental must be False, 'exact' or 'approx', got {incremental!r}")
    if incremental and ctx.model is None:
        raise MethodError("incremental occlusion needs a torch model, not a black box")
    if incremental and (channels_last or compile is not False):
        raise InputError("channels_last and compile apply to full passes, not to incremental "
                         "occlusion; drop them or use incremental=False")
    predict = _predictor(ctx, channels_last, compile)
    logits, t, labels = _clean(ctx, predict)
    B, C, H, W = ctx.x.shape
    side = min(H, W)
    win = window if window is not None else max(1, side // 8)
    wh, ww = (win, win) if isinstance(win, int) else (int(win[0]), int(win[1]))
    st = stride if stride is not None else max(1, min(wh, ww) // 2)
    corners = window_boxes((H, W), (wh, ww), st).to(ctx.x.device)
    n = corners.shape[0]
    counts = torch.zeros(H * W, device=ctx.x.device)
    for start in range(0, n, 4096):
        counts += box_masks(corners[start:start + 4096], (wh, ww), (H, W)).flatten(1).float().sum(0)
    maps = []
    for b in range(B):
        xb = ctx.x[b]
        base = make_baseline(xb, baseline, ctx.preprocessing, sigma=sigma)
        sc = _scorer(t, b, score)
        s0 = sc(logits[b:b + 1])[0]
        if incremental:
            from ._incremental import IncrementalOcclusion

            assert ctx.model is not None
            inc = IncrementalOcclusion(ctx.model, xb[None], tau=None if incremental == "exact" else tau)
            rows = torch.arange(wh, device=xb.device)
            cols = torch.arange(ww, device=xb.device)

            def make_inc(a: int, z: int, base: torch.Tensor = base, rows: torch.Tensor = rows,
                         cols: torch.Tensor = cols) -> torch.Tensor:
                c = corners[a:z]
                r_ = c[:, 0, None, None] + rows[None, :, None]
                c_ = c[:, 1, None, None] + cols[None, None, :]
                return base[:, r_, c_].permute(1, 0, 2, 3)

            def predict_inc(i_c: tuple[torch.Tensor, torch.Tensor],
                            inc: IncrementalOcclusion = inc) -> torch.Tensor:
                return inc.scores(*i_c)

            scores = evaluate(
                predict_inc, lambda a, z: (make_inc(a, z), corners[a:z]), n, sc,  # type: ignore[arg-type,return-value]
                batch_size=eval_batch_size if eval_batch_size != "auto" else 64,
                progress=progress, desc="occlusion",
            )
        else:
            def make(a: int, z: int, xb: torch.Tensor = xb, base: torch.Tensor = base) -> torch.Tensor:
                m = box_masks(corners[a:z], (wh, ww), (H, W))[:, None]
                return torch.where(m, base, xb)

            scores = evaluate(predict, make, n, sc, batch_size=eval_batch_size, sample=xb[None],
                              progress=progress, desc="occlusion")
        drops = s0 - scores
        acc = torch.zeros(H * W, device=ctx.x.device)
        for start in range(0, n, 4096):
            m = box_masks(corners[start:start + 4096], (wh, ww), (H, W)).flatten(1).float()
            acc += drops[start:start + 4096] @ m
        maps.append((acc / counts.clamp(min=1)).view(H, W))
    return MethodOutput(
        map=torch.stack(maps), targets=labels, logits=logits,
        diagnostics={"windows": n, "window": [wh, ww], "stride": st if isinstance(st, int) else list(st)},
    )


# ---------------------------------------------------------------------------------------------
# RISE


@register(
    "rise",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    summary="average of many random smooth masks, each weighted by the class score the model "
    "gives the image seen through it",
    caveats="a Monte-Carlo estimate: noisy for few masks; the mask resolution (cells) limits "
    "the detail",
    reference="Petsiuk, Das and Saenko 2018, RISE: Randomized Input Sampling for Explanation of "
    "Black-box Models",
    fast_options={"n_masks": 64, "check_every": 64},
    ranges={**_ENGINE_RANGES, "n_masks": _SAMPLES, "cells": ints(1, 10_000),
            "p": reals(0, 1, lo_open=True), "baseline": reals(0, 1),
            "converge": _SAMPLING_RANGES["converge"], "check_every": ints(1)},
    choices={**_ENGINE_CHOICES, "baseline": _BASELINES, "score": _SCORES},
    claims=(
        CueClaim(n=16, at_least=0.7, options={'n_masks': 300, 'cells': 8}, measured=0.875),
    ),
)
def rise(
    ctx: MethodContext,
    n_masks: int = 2000,
    cells: int = 7,
    p: float = 0.5,
    baseline: str | float | torch.Tensor = "grey",
    score: str = "softmax",
    converge: float | None = None,
    check_every: int = 250,
    eval_batch_size: int | str = "auto",
    progress: bool | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
) -> MethodOutput:
    """RISE.

    Args:
        n_masks: number of random masks (the maximum with ``converge``).
        cells: grid cells per side before upsampling.
        p: probability that a cell is kept.
        baseline: what shows through where a mask is 0 (see :func:`occlusion`).
        score: ``"softmax"`` (the paper) or ``"raw"``.
        converge: stop early once two successive estimates correlate above ``1 - converge``.
        check_every: masks per round (and between convergence checks).
        eval_batch_size: masked images per model pass, or ``"auto"``.
        progress: show a progress bar.
        channels_last, compile: engine speed options for a torch model (see
            :class:`~convscope.perturb.Predictor`); same map up to float rounding.

    Shape:
        map (B, H, W).
    """
    if n_masks < 1 or not 0 < p <= 1 or cells < 1 or check_every < 1:
        raise InputError("rise needs n_masks >= 1, 0 < p <= 1, cells >= 1 and check_every >= 1")
    predict = _predictor(ctx, channels_last, compile)
    logits, t, labels = _clean(ctx, predict)
    B, C, H, W = ctx.x.shape
    maps, used, stab = [], [], []
    for b in range(B):
        xb = ctx.x[b]
        base = make_baseline(xb, baseline, ctx.preprocessing)
        sc = _scorer(t, b, score)
        gen = torch.Generator().manual_seed(ctx.seed)
        conv = Convergence(converge)
        acc = torch.zeros(H * W, dtype=torch.float64, device=xb.device)
        done = 0
        while done < n_masks:
            r = min(check_every, n_masks - done)
            masks = rise_masks(r, (H, W), cells, p, gen, device=xb.device)

            def make(a: int, z: int, masks: torch.Tensor = masks, xb: torch.Tensor = xb,
                     base: torch.Tensor = base) -> torch.Tensor:
                m = masks[a:z, None]
                return base + m * (xb - base)

            s = evaluate(predict, make, r, sc, batch_size=eval_batch_size, sample=xb[None],
                         progress=progress, desc="rise")
            acc += (s.double() @ masks.flatten(1).double())
            done += r
            if conv.update(acc / done) and done < n_masks:
                break
        maps.append((acc / (done * p)).float().view(H, W))
        used.append(done)
        stab.append(conv.stability)
    return MethodOutput(map=torch.stack(maps), targets=labels, logits=logits, normalize="minmax",
                        diagnostics={"n_samples": used, "stability": stab})


# ---------------------------------------------------------------------------------------------
# segments, LIME, Kernel SHAP


def _unit_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) model-space image -> (H, W, C) float array in [0, 1] for segmentation."""
    lo, hi = x.amin(), x.amax()
    u = ((x - lo) / (hi - lo).clamp(min=1e-12)).detach().cpu().float().permute(1, 2, 0).numpy()
    return u.astype(np.float64)


def segment(
    x: torch.Tensor,
    segmentation: str | np.ndarray | torch.Tensor = "slic",
    *,
    n_segments: int = 50,
    cell: int | None = None,
    segment_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Superpixels of one image, labelled 0 .. d-1.

    Args:
        x: (C, H, W) the image (model space; it is min-max scaled for segmentation).
        segmentation: ``"slic"``, ``"quickshift"``, ``"felzenszwalb"`` (scikit-image),
            ``"grid"`` (square cells of ``cell`` px), or an (H, W) integer mask.
        n_segments: SLIC's target number of segments.
        cell: grid cell size (default: an eighth of the shorter side).
        segment_options: extra keyword arguments for the scikit-image function.

    Shape:
        returns (H, W) long.
    """
    H, W = x.shape[-2:]
    opts = dict(segment_options or {})
    if isinstance(segmentation, (np.ndarray, torch.Tensor)):
        seg = torch.as_tensor(segmentation)
        if seg.shape != (H, W):
            raise InputError(f"a segment mask must be (H, W) = ({H}, {W}), got {tuple(seg.shape)}")
        seg = seg.long()
    elif segmentation == "grid":
        c = int(cell or max(1, min(H, W) // 8))
        r = torch.arange(H) // c
        q = torch.arange(W) // c
        seg = r[:, None] * (int(q.max()) + 1) + q[None, :]
    elif segmentation in ("slic", "quickshift", "felzenszwalb"):
        from skimage import segmentation as sk

        img = _unit_image(x)
        gray = img.shape[2] == 1
        if segmentation == "slic":
            opts.setdefault("n_segments", n_segments)
            opts.setdefault("compactness", 0.1 if gray else 10.0)
            opts.setdefault("start_label", 0)
            arr = sk.slic(img[..., 0] if gray else img, channel_axis=None if gray else -1, **opts)
        elif segmentation == "quickshift":
            opts.setdefault("kernel_size", 4)
            opts.setdefault("max_dist", 200)
            opts.setdefault("ratio", 0.2)
            rgb = np.repeat(img, 3, axis=2) if gray else img
            arr = sk.quickshift(rgb, **opts)
        else:
            opts.setdefault("scale", 100)
            opts.setdefault("sigma", 0.5)
            opts.setdefault("min_size", 20)
            arr = sk.felzenszwalb(img[..., 0] if gray else img, channel_axis=None if gray else -1, **opts)
        seg = torch.from_numpy(np.ascontiguousarray(arr)).long()
    else:
        raise InputError(
            f"unknown segmentation {segmentation!r}; use slic, quickshift, felzenszwalb, grid or "
            "an (H, W) integer mask"
        )
    _, inv = torch.unique(seg, return_inverse=True)
    return inv.view(H, W).to(x.device)


def _segments_for(ctx: MethodContext, b: int, segmentation: Any, n_segments: int, cell: int | None,
                  segment_options: dict[str, Any] | None) -> torch.Tensor:
    if isinstance(segmentation, (np.ndarray, torch.Tensor)) and segmentation.ndim == 3:
        segmentation = segmentation[b]
    return segment(ctx.x[b], segmentation, n_segments=n_segments, cell=cell,
                   segment_options=segment_options)


def _hidden(ctx: MethodContext, xb: torch.Tensor, seg: torch.Tensor, d: int,
            hide: str | float | torch.Tensor) -> torch.Tensor:
    if isinstance(hide, str) and hide == "segment_mean":
        C = xb.shape[0]
        flat = xb.reshape(C, -1)
        idx = seg.flatten()
        sums = torch.zeros(C, d, device=xb.device, dtype=xb.dtype).index_add_(1, idx, flat)
        cnt = torch.bincount(idx, minlength=d).to(xb.dtype)
        return (sums / cnt)[:, idx].view_as(xb)
    return make_baseline(xb, hide, ctx.preprocessing)


def _segment_make(xb: torch.Tensor, hid: torch.Tensor, seg: torch.Tensor, z: torch.Tensor
                  ) -> Callable[[int, int], torch.Tensor]:
    zz = z.to(xb.device).bool()

    def make(a: int, b: int) -> torch.Tensor:
        keep = zz[a:b][:, seg][:, None]  # (n, 1, H, W)
        return torch.where(keep, xb, hid)

    return make




@register(
    "lime",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    signed=True,
    summary="weights of a local linear model that predicts the class probability from which "
    "superpixels are shown",
    caveats="depends on the segmentation and the kernel width; a random local fit (check "
    "local_r2); segments, not pixels",
    reference="Ribeiro, Singh and Guestrin 2016, \"Why Should I Trust You?\": Explaining the "
    "Predictions of Any Classifier",
    fast_options={"n_samples": 48, "segmentation": "grid", "cell": 8, "check_every": 48},
    ranges={**_SAMPLING_RANGES, "n_samples": ints(2, 1_000_000), "kernel_width": reals(0, lo_open=True),
            "alpha": reals(0)},
    choices=_SAMPLING_CHOICES,
    claims=(
        CueClaim(n=16, at_least=0.8, measured=0.94,
                 options={'segmentation': 'grid', 'cell': 8, 'n_samples': 150, 'hide': 'zero'}),
    ),
)
def lime(
    ctx: MethodContext,
    n_samples: int = 1000,
    segmentation: str | np.ndarray | torch.Tensor = "slic",
    n_segments: int = 50,
    cell: int | None = None,
    segment_options: dict[str, Any] | None = None,
    hide: str | float | torch.Tensor = "grey",
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    score: str = "softmax",
    converge: float | None = None,
    check_every: int = 250,
    eval_batch_size: int | str = "auto",
    progress: bool | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
) -> MethodOutput:
    """LIME for images.

    Args:
        n_samples: perturbed images (the first shows everything), the maximum with ``converge``.
        hide: what replaces a hidden segment: ``"grey"`` (default) or any baseline of
            :func:`occlusion`, or ``"segment_mean"`` (its mean colour, the lime package's default;
            blind to a uniform region such as a snow band, whose mean is itself: on the bundled
            digits-snow model it found the snow on 45% of snowy wolves, grey on 100%).
        kernel_width: width of the exponential kernel on the cosine distance.
        alpha: ridge penalty.
        score: ``"softmax"`` (probabilities, as the lime package) or ``"raw"``.
        converge, check_every: early stopping (see the module docstring).
        eval_batch_size, progress: as for :func:`occlusion`.
        channels_last, compile: engine speed options for a torch model (see
            :class:`~convscope.perturb.Predictor`); same map up to float rounding.
        segmentation: ``"slic"``, ``"quickshift"``, ``"felzenszwalb"``, ``"grid"``, or an
            (H, W) / (B, H, W) integer mask of segments.
        n_segments: SLIC's target number of segments.
        cell: grid cell size in px (``segmentation="grid"``).
        segment_options: extra keyword arguments for the scikit-image segmentation.

    Shape:
        map (B, H, W): each pixel carries its segment's weight. Diagnostics per image:
        ``segments`` (B, H, W), ``segment_weights``, ``intercept``, ``local_r2``, ``n_samples``,
        ``stability``.
    """
    if n_samples < 2 or check_every < 1:
        raise InputError("lime needs n_samples >= 2 and check_every >= 1")
    predict = _predictor(ctx, channels_last, compile)
    logits, t, labels = _clean(ctx, predict)
    B = ctx.x.shape[0]
    maps, segs, weights, inter, r2s, used, stab = [], [], [], [], [], [], []
    for b in range(B):
        xb = ctx.x[b]
        seg = _segments_for(ctx, b, segmentation, n_segments, cell, segment_options)
        d = int(seg.max()) + 1
        hid = _hidden(ctx, xb, seg, d, hide)
        sc = _scorer(t, b, score)
        gen = torch.Generator().manual_seed(ctx.seed)
        z = coalition_samples(n_samples, d, gen)
        dist = 1 - z.sum(1) / (z.norm(dim=1).clamp(min=1e-12) * d**0.5)
        w = torch.sqrt(torch.exp(-(dist**2) / kernel_width**2))
        conv = Convergence(converge)
        ys: list[torch.Tensor] = []
        done = 0
        coef, icpt, r2 = torch.zeros(d), 0.0, float("nan")
        make = _segment_make(xb, hid, seg, z)
        while done < n_samples:
            r = min(check_every, n_samples - done)
            a0 = done
            ys.append(evaluate(predict, lambda a, z_, a0=a0, make=make: make(a0 + a, a0 + z_),  # type: ignore[misc]
                               r, sc,
                               batch_size=eval_batch_size, sample=xb[None], progress=progress,
                               desc="lime").cpu())
            done += r
            if done >= 2:
                coef, icpt, r2 = weighted_ridge(z[:done], torch.cat(ys), w[:done], alpha)
                if conv.update(coef) and done < n_samples:
                    break
        maps.append(coef.to(xb.device)[seg])
        segs.append(seg.cpu())
        weights.append(coef.tolist())
        inter.append(icpt)
        r2s.append(r2)
        used.append(done)
        stab.append(conv.stability)
    return MethodOutput(
        map=torch.stack(maps), targets=labels, logits=logits,
        diagnostics={"segments": torch.stack(segs), "segment_weights": weights, "intercept": inter,
                     "local_r2": r2s, "n_samples": used, "stability": stab},
    )


def _shap_solve(z: torch.Tensor, y: torch.Tensor, f0: float, fx: float) -> torch.Tensor:
    """Least squares ``y - f0 ~ z . phi`` with ``sum(phi) = fx - f0`` (eliminating the last
    feature), the Kernel SHAP estimator for samples drawn from the Shapley kernel."""
    d = z.shape[1]
    total = fx - f0
    if d == 1:
        return torch.tensor([total])
    z64, y64 = z.double(), y.double()
    yt = y64 - f0 - z64[:, -1] * total
    xt = z64[:, :-1] - z64[:, -1:]
    a = xt.T @ xt + 1e-9 * torch.eye(d - 1, dtype=torch.float64)
    phi = torch.linalg.solve(a, xt.T @ yt)
    return torch.cat([phi, (total - phi.sum()).view(1)]).float()


@register(
    "kernel_shap",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    signed=True,
    summary="Shapley values of the superpixels: each segment's average contribution to the "
    "class score over random coalitions, summing to score(image) - score(baseline)",
    caveats="depends on the segmentation and the baseline that hides a segment; a sampled "
    "estimate (more samples, less noise)",
    reference="Lundberg and Lee 2017, A Unified Approach to Interpreting Model Predictions",
    fast_options={"n_samples": 48, "segmentation": "grid", "cell": 8, "check_every": 48},
    ranges=_SAMPLING_RANGES,
    choices=_SAMPLING_CHOICES,
    claims=(
        CueClaim(n=16, at_least=0.7, measured=0.81,
                 options={'segmentation': 'grid', 'cell': 8, 'n_samples': 150}),
    ),
)
def kernel_shap(
    ctx: MethodContext,
    n_samples: int = 1000,
    segmentation: str | np.ndarray | torch.Tensor = "slic",
    n_segments: int = 50,
    cell: int | None = None,
    segment_options: dict[str, Any] | None = None,
    hide: str | float | torch.Tensor = "grey",
    score: str = "raw",
    converge: float | None = None,
    check_every: int = 250,
    eval_batch_size: int | str = "auto",
    progress: bool | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
) -> MethodOutput:
    """Kernel SHAP over superpixels.

    Args:
        n_samples: sampled coalitions (the maximum with ``converge``).
        hide: what replaces an absent segment (see :func:`occlusion`); default grey pixels.
        score: ``"raw"`` (logits; default) or ``"softmax"``.
        converge, check_every, eval_batch_size, progress: as for :func:`lime`.
        channels_last, compile: engine speed options for a torch model (see
            :class:`~convscope.perturb.Predictor`); same map up to float rounding.
        segmentation: ``"slic"``, ``"quickshift"``, ``"felzenszwalb"``, ``"grid"``, or an
            (H, W) / (B, H, W) integer mask of segments.
        n_segments: SLIC's target number of segments.
        cell: grid cell size in px (``segmentation="grid"``).
        segment_options: extra keyword arguments for the scikit-image segmentation.

    Shape:
        map (B, H, W): each pixel carries its segment's Shapley value. Diagnostics per image:
        ``segments``, ``segment_weights`` (phi), ``base_value`` (score with all hidden),
        ``n_samples``, ``stability``.
    """
    if n_samples < 1 or check_every < 1:
        raise InputError("kernel_shap needs n_samples >= 1 and check_every >= 1")
    predict = _predictor(ctx, channels_last, compile)
    logits, t, labels = _clean(ctx, predict)
    B = ctx.x.shape[0]
    maps, segs, weights, bases, used, stab = [], [], [], [], [], []
    for b in range(B):
        xb = ctx.x[b]
        seg = _segments_for(ctx, b, segmentation, n_segments, cell, segment_options)
        d = int(seg.max()) + 1
        hid = _hidden(ctx, xb, seg, d, hide)
        sc = _scorer(t, b, score)
        fx = float(sc(logits[b:b + 1])[0])
        f0 = float(sc(predict(hid[None]))[0])
        gen = torch.Generator().manual_seed(ctx.seed)
        z, _w = shapley_samples(n_samples, d, gen)
        make = _segment_make(xb, hid, seg, z)
        conv = Convergence(converge)
        ys: list[torch.Tensor] = []
        done = 0
        phi = torch.zeros(d)
        while done < n_samples:
            r = min(check_every, n_samples - done)
            a0 = done
            ys.append(evaluate(predict, lambda a, z_, a0=a0, make=make: make(a0 + a, a0 + z_),  # type: ignore[misc]
                               r, sc,
                               batch_size=eval_batch_size, sample=xb[None], progress=progress,
                               desc="kernel_shap").cpu())
            done += r
            phi = _shap_solve(z[:done], torch.cat(ys), f0, fx)
            if conv.update(phi) and done < n_samples:
                break
        maps.append(phi.to(xb.device)[seg])
        segs.append(seg.cpu())
        weights.append(phi.tolist())
        bases.append(f0)
        used.append(done)
        stab.append(conv.stability)
    return MethodOutput(
        map=torch.stack(maps), targets=labels, logits=logits,
        diagnostics={"segments": torch.stack(segs), "segment_weights": weights, "base_value": bases,
                     "n_samples": used, "stability": stab},
    )


def lime_picture(
    explanation: Any,
    index: int = 0,
    *,
    num_features: int = 5,
    positive_only: bool = False,
    dim: float = 0.35,
    min_side: int = 224,
) -> Image.Image:
    """The classic LIME picture: the top positive (green) and negative (red) segments in colour
    over a dimmed image, segment borders in yellow.

    Args:
        explanation: an :class:`~convscope.results.Explanation` of ``lime`` or ``kernel_shap``.
        index: which image of the batch.
        num_features: how many segments of each sign to show.
        positive_only: show only the positive ones.
        dim: brightness of the rest of the image.
        min_side: upscale (nearest) so the shorter side is at least this.
    """
    diag = explanation.diagnostics
    if "segments" not in diag or "segment_weights" not in diag:
        raise MethodError("lime_picture needs an explanation made by 'lime' or 'kernel_shap'")
    from skimage.segmentation import find_boundaries

    seg = torch.as_tensor(diag["segments"])[index].numpy()
    wts = np.asarray(diag["segment_weights"][index], dtype=np.float64)
    img = np.asarray(explanation.images[index], dtype=np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    k = max(1, int(np.ceil(min_side / min(seg.shape))))
    if k > 1:  # upscale first so the borders stay one pixel wide
        seg = seg.repeat(k, 0).repeat(k, 1)
        img = img.repeat(k, 0).repeat(k, 1)
    out = img * dim
    order = np.argsort(-wts)
    pos = [i for i in order[:num_features] if wts[i] > 0]
    neg = [] if positive_only else [i for i in order[::-1][:num_features] if wts[i] < 0]
    for ids, colour in ((pos, (0.0, 1.0, 0.0)), (neg, (1.0, 0.0, 0.0))):
        if not ids:
            continue
        m = np.isin(seg, ids)
        out[m] = 0.6 * img[m] + 0.4 * np.asarray(colour)
    shown = np.isin(seg, pos + neg)
    border = find_boundaries(np.where(shown, seg, -1), mode="inner") & shown
    out[border] = (1.0, 1.0, 0.0)
    return Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Score-CAM and Ablation-CAM


def _one_layer(ctx: MethodContext, name: str) -> str:
    if len(ctx.layer) != 1:
        raise MethodError(f"{name} works on one layer; got {len(ctx.layer)}: {', '.join(ctx.layer)}")
    return ctx.layer[0]


def _activations(ctx: MethodContext, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    assert ctx.model is not None
    acts, logits = [], []
    with capture(ctx.model, layer) as cap:
        for r in ctx.chunks():
            cap.reset()
            with torch.no_grad():
                logits.append(ctx.model(ctx.x[r]))
            a = cap.activation(layer)
            if a.ndim != 4:
                raise MethodError(
                    f"layer {layer!r} gives a {a.ndim}-D output {tuple(a.shape)}; Score-CAM and "
                    "Ablation-CAM need a (B, C, h, w) convolutional layer"
                )
            acts.append(a.detach())
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
    ranges={**_ENGINE_RANGES, "baseline": reals(0, 1)},
    choices={**_ENGINE_CHOICES, "baseline": _BASELINES, "weights": ("softmax", "increase")},
    claims=(
        CueClaim(n=16, at_least=0.8, measured=0.94),
    ),
)
def scorecam(
    ctx: MethodContext,
    weights: str = "softmax",
    baseline: str | float | torch.Tensor = "black",
    eval_batch_size: int | str = "auto",
    progress: bool | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
) -> MethodOutput:
    """Score-CAM.

    Args:
        weights: ``"softmax"``: softmax over channels of the target logit of each masked image
            (the paper's Algorithm 1, as pytorch-grad-cam); ``"increase"``: increase of the
            target probability over the baseline image (the paper's eq. 5).
        baseline: what shows through where a mask is 0 (see :func:`occlusion`); default black
            pixels, i.e. the input multiplied by the mask in pixel space (the paper's x * H_k).
        eval_batch_size, progress: as for :func:`occlusion`.
        channels_last, compile: engine speed options for a torch model (see
            :class:`~convscope.perturb.Predictor`); same map up to float rounding.

    Shape:
        map (B, h, w) at the layer's resolution (the facade upsamples).
    """
    if weights not in ("softmax", "increase"):
        raise InputError(f"unknown weights {weights!r}; use 'softmax' or 'increase'")
    layer = _one_layer(ctx, "scorecam")
    acts, logits = _activations(ctx, layer)
    t = ctx.resolve(logits)
    labels = t.labels() or [None] * ctx.x.shape[0]
    predict = as_predict(ctx.model, channels_last=channels_last, compile=compile)
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
            sc = _scorer(t, b, "raw")
            s = evaluate(predict, make, a.shape[0], sc, batch_size=eval_batch_size, sample=xb[None],
                         progress=progress, desc="scorecam")
            alpha = torch.softmax(s, 0)
        else:
            sc = _scorer(t, b, "softmax")
            s = evaluate(predict, make, a.shape[0], sc, batch_size=eval_batch_size, sample=xb[None],
                         progress=progress, desc="scorecam")
            alpha = s - sc(predict(base[None]))[0]
        maps.append(torch.relu((alpha.view(-1, 1, 1) * a).sum(0)))
    return MethodOutput(map=torch.stack(maps), targets=labels, logits=logits)


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
    ranges=_ENGINE_RANGES,
    choices=_ENGINE_CHOICES,
    claims=(
        CueClaim(n=16, at_least=0.9, measured=1.0),
    ),
)
def ablationcam(
    ctx: MethodContext,
    eval_batch_size: int | str = "auto",
    progress: bool | None = None,
    channels_last: bool = False,
    compile: bool | str = False,
) -> MethodOutput:
    """Ablation-CAM: ``w_k = (S - S_k) / S``, ``M = ReLU(sum_k w_k A_k)``.

    Only the network after the layer runs for the ablated activations when ``torch.fx`` can
    trace the model (``diagnostics["tail_only"]``); otherwise each ablation is a full pass with
    the layer's output replaced by a scoped hook.

    Args:
        eval_batch_size, progress: as for :func:`occlusion`.
        channels_last, compile: engine speed options (see :class:`~convscope.perturb.Predictor`),
            applied to the tail. On the full-pass fallback ``compile`` is not used (a compiled
            graph would not see the scoped hook): it runs eagerly with a warning.

    Shape:
        map (B, h, w) at the layer's resolution (the facade upsamples).
    """
    from ._incremental import layer_tail, replace_output

    assert ctx.model is not None
    layer = _one_layer(ctx, "ablationcam")
    acts, logits = _activations(ctx, layer)
    t = ctx.resolve(logits)
    labels = t.labels() or [None] * ctx.x.shape[0]
    tail = layer_tail(ctx.model, layer)
    module = dict(ctx.model.named_modules())[layer]
    if tail is not None:  # the tail shares the model's parameters: the engine runs the tail module
        engine = as_predict(tail.module, channels_last=channels_last, compile=compile)
        tail_run = dataclasses.replace(tail, module=engine)
    else:
        if compile is not False:
            warnings.warn("ablationcam: the model cannot be traced, so each ablation is a full pass "
                          "with a scoped hook; compile is not used there (running eagerly)",
                          RuntimeWarning, stacklevel=2)
        engine = as_predict(ctx.model, channels_last=channels_last)
    maps = []
    for b in range(ctx.x.shape[0]):
        a = acts[b]
        K = a.shape[0]
        sc = _scorer(t, b, "raw")
        s0 = sc(logits[b:b + 1])[0]
        eye = torch.eye(K, device=a.device, dtype=a.dtype)

        def ablated(s: int, e: int, a: torch.Tensor = a, eye: torch.Tensor = eye) -> torch.Tensor:
            return a[None] * (1 - eye[s:e])[:, :, None, None]

        if tail is not None:
            with torch.no_grad():
                _act, extra = tail.head(ctx.x[b:b + 1])

            def run_tail(acts_: torch.Tensor, extra: list[Any] = extra) -> torch.Tensor:
                return tail_run(acts_, extra)  # type: ignore[misc]

            with engine.prepared():
                s = evaluate(run_tail, ablated, K, sc,
                             batch_size=eval_batch_size if eval_batch_size != "auto" else _tail_batch(ctx, K),
                             progress=progress, desc="ablationcam")
        else:
            state: dict[str, torch.Tensor] = {}

            def run_full(acts_: torch.Tensor, state: dict[str, torch.Tensor] = state, b: int = b
                         ) -> torch.Tensor:
                state["a"] = acts_
                xs = ctx.x[b:b + 1].expand(acts_.shape[0], *ctx.x.shape[1:])
                with replace_output(module, lambda _o, state=state: state["a"]):  # type: ignore[misc]
                    return engine(xs)

            with engine.prepared():
                s = evaluate(run_full, ablated, K, sc,
                             batch_size=eval_batch_size if eval_batch_size != "auto" else 32,
                             progress=progress, desc="ablationcam")
        den = s0 if float(s0.abs()) > 1e-12 else torch.full_like(s0, 1e-12)
        w = (s0 - s) / den
        maps.append(torch.relu((w.view(-1, 1, 1) * a).sum(0)))
    return MethodOutput(map=torch.stack(maps), targets=labels, logits=logits,
                        diagnostics={"tail_only": tail is not None})


def _tail_batch(ctx: MethodContext, k: int) -> int:
    return min(k, 256)
