"""Superpixels for the segment methods (LIME, Kernel SHAP): :func:`segment` cuts an image, and
the pieces those methods share: the segments of one image of a batch, what a hidden segment shows,
and the masked images of a batch of coalitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.core.validate import ints, reals
from convscope.methods.attribution._base import MethodContext
from convscope.methods.attribution._engine import AUTO, ENGINE_CHOICES, ENGINE_RANGES, SCORES
from convscope.methods.attribution._surrogate import CONVERGE_RANGES, ranks, split_fit, until_stable
from convscope.models.inputs import BASELINES
from convscope.models.inputs import baseline as make_baseline

__all__ = ["SEGMENT_CHOICES", "SEGMENT_RANGES", "SegmentFit", "fit_segments", "hidden", "segment",
           "segment_make", "segments_for"]

E = TypeVar("E")

#: registry ranges / choices shared by the segment methods (with the engine's and the stopping
#: rule's)
SEGMENT_RANGES = {
    **ENGINE_RANGES,
    **CONVERGE_RANGES,
    "n_samples": ints(1, 1_000_000),
    "n_segments": ints(1, 100_000),
    "cell": ints(1),
    "hide": reals(0, 1),
}
SEGMENT_CHOICES = {
    **ENGINE_CHOICES,
    "segmentation": ("slic", "quickshift", "felzenszwalb", "grid"),
    "hide": (AUTO, "segment_mean", *BASELINES),
    "score": SCORES,
}


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


def segments_for(ctx: MethodContext, b: int, segmentation: Any, n_segments: int, cell: int | None,
                  segment_options: dict[str, Any] | None) -> torch.Tensor:
    if isinstance(segmentation, (np.ndarray, torch.Tensor)) and segmentation.ndim == 3:
        segmentation = segmentation[b]
    return segment(ctx.x[b], segmentation, n_segments=n_segments, cell=cell,
                   segment_options=segment_options)


def hidden(ctx: MethodContext, xb: torch.Tensor, seg: torch.Tensor, d: int,
            hide: str | float | torch.Tensor) -> torch.Tensor:
    if isinstance(hide, str) and hide == "segment_mean":
        C = xb.shape[0]
        flat = xb.reshape(C, -1)
        idx = seg.flatten()
        sums = torch.zeros(C, d, device=xb.device, dtype=xb.dtype).index_add_(1, idx, flat)
        cnt = torch.bincount(idx, minlength=d).to(xb.dtype)
        return (sums / cnt)[:, idx].view_as(xb)
    return make_baseline(xb, hide, ctx.preprocessing)


def segment_make(xb: torch.Tensor, hid: torch.Tensor, seg: torch.Tensor, z: torch.Tensor
                  ) -> Callable[[int, int], torch.Tensor]:
    zz = z.to(xb.device).bool()

    def make(a: int, b: int) -> torch.Tensor:
        keep = zz[a:b][:, seg][:, None]  # (n, 1, H, W)
        return torch.where(keep, xb, hid)

    return make


def _keys(z: torch.Tensor) -> list[bytes]:
    """Hashable keys of coalitions (n, d) in {0, 1}, one per row."""
    return [r.tobytes() for r in np.packbits(z.cpu().numpy() > 0.5, axis=1)]


@dataclass
class SegmentFit:
    """One image's sampled surrogate over its segments (see :func:`fit_segments`).

    Attributes:
        index: the image's index in the batch.
        seg: (H, W) segment labels.
        hidden: (C, H, W) the image with every segment hidden.
        score: the image's target scorer.
        result: the last fit.
        n_samples: samples used.
        stability: the last correlation of two successive fits.
        reliability: the predicted correlation of two independent runs' fits (split-half).
        cache: the fit's own per-image values.
    """

    index: int
    seg: torch.Tensor
    hidden: torch.Tensor
    score: Callable[[torch.Tensor], torch.Tensor]
    result: Any = None
    n_samples: int = 0
    stability: float = float("nan")
    reliability: float = float("nan")
    cache: dict[str, Any] = field(default_factory=dict)


def fit_segments(
    run: Any, ctx: MethodContext, segmentation: Any, segment_options: dict[str, Any], hide: Any,
    score: str, n_samples: int, check_every: int, converge: float | None,
    draw: Callable[[int, torch.Generator], torch.Tensor],
    fit: Callable[[SegmentFit, torch.Tensor, torch.Tensor], E],
    estimate: Callable[[E], torch.Tensor] = lambda e: e,  # type: ignore[assignment,return-value]
    rule: str = "successive",
    halves: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[SegmentFit]:
    """The per-image loop of LIME and Kernel SHAP: segment each image, draw coalitions, evaluate
    them on the engine in rounds and refit until stable (:func:`._surrogate.until_stable`).

    A coalition is evaluated once: a repeated one (in a round or from an earlier round) reuses
    its score, and the all-shown coalition takes the clean pass's score (the model is assumed
    deterministic, as everywhere in convscope).

    Args:
        run: the engine run (:class:`._engine.Run`).
        ctx: the method context.
        segmentation: as for :func:`segment`, or a (B, H, W) mask.
        segment_options: ``n_segments``, ``cell`` and ``segment_options`` for :func:`segment`.
        hide: what a hidden segment shows (:func:`hidden`).
        score: ``"raw"`` or ``"softmax"``.
        n_samples, check_every, converge: the sampling budget and stopping rule.
        draw: ``draw(d, generator)`` -> (n_samples, d) coalitions in {0, 1}.
        fit: ``fit(image, z, y)`` -> the estimate from coalitions ``z`` and their scores ``y``.
        estimate: the tensor of a fit whose stability is checked (its even-sample and odd-sample
            fits give the reliability, :func:`._surrogate.until_stable`).
        rule: the stopping rule of :func:`._surrogate.until_stable`; with ``"split_half"`` the
            halves' estimates are compared by rank (the reliability is then a predicted Spearman
            rank correlation of two runs).
        halves: ``halves(n)`` -> the sample indices of the two halves (default even / odd).
    """
    by_rank = rule == "split_half"
    out = []
    for b in range(ctx.x.shape[0]):
        xb = ctx.x[b]
        seg = segments_for(ctx, b, segmentation, **segment_options)
        d = int(seg.max()) + 1
        hid = run.baseline(b, hide, score) if isinstance(hide, str) and hide == AUTO else hidden(
            ctx, xb, seg, d, hide)
        img = SegmentFit(b, seg, hid, run.scorer(b, score))
        z = draw(d, torch.Generator().manual_seed(ctx.seed))
        seen = {_keys(torch.ones(1, d))[0]: float(img.score(run.logits[b:b + 1])[0])}
        ys: list[torch.Tensor] = []

        def step(a: int, e: int, img: SegmentFit = img, z: torch.Tensor = z, ys: list[torch.Tensor] = ys,
                 seen: dict[bytes, float] = seen, xb: torch.Tensor = xb) -> tuple[E, E, E]:
            keys = _keys(z[a:e])
            new = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in seen}.items())
            if new:
                rows = z[a:e][torch.tensor([i for _, i in new])]
                y = run.evaluate(segment_make(xb, img.hidden, img.seg, rows), len(new), img.score).cpu()
                seen.update(zip([k for k, _ in new], y.tolist(), strict=True))
            ys.append(torch.tensor([seen[k] for k in keys]))
            return split_fit(lambda z_, y_, img=img: fit(img, z_, y_), z[:e], torch.cat(ys),
                             halves=None if halves is None else halves(e))

        def both(f: tuple[E, E, E]) -> tuple[torch.Tensor, torch.Tensor]:
            h = estimate(f[1]), estimate(f[2])
            return (ranks(h[0]), ranks(h[1])) if by_rank else h

        fits, img.n_samples, conv = until_stable(n_samples, check_every, converge, step,
                                                 estimate=lambda f: estimate(f[0]), halves=both, first=4,
                                                 rule=rule)
        img.result, img.stability, img.reliability = fits[0], conv.stability, conv.reliability
        out.append(img)
    return out
