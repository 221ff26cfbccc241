"""Faithfulness metrics that remove sets of pixels chosen by the map, not one baseline sweep:
ROAD (imputed, not blacked out), IROF (superpixels), sensitivity-N and infidelity (random sets).

* :func:`road` (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", ICML 2022): remove the top (MoRF) or bottom (LeRF) ``p`` % of pixels and fill them by
  *noisy linear imputation* (each removed pixel the weighted mean of its 8 neighbours, weights 1/6
  for edge and 1/12 for corner neighbours, solved as one sparse linear system, plus Gaussian noise
  of standard deviation ``noise``), so that the removal's shape does not leak the class. Accuracy
  (or the target probability) against ``p``: MoRF **lower is better**, LeRF higher is better.
  With ``noise=0`` it equals Quantus 0.6.0's ``ROAD`` (MoRF) to float precision.
* :func:`irof` (Rieger and Hansen, "IROF: a low resource evaluation metric for explanation
  methods", ICLR-W 2020): remove SLIC superpixels in order of their mean relevance, filled with
  the image's mean colour, and take the area over the curve of ``f(x_k) / f(x)`` against the share of
  segments removed: **higher is better**. Quantus 0.6.0 fills with the mean of the whole *batch*
  as already perturbed (so one image's score depends on the others and on earlier steps) and sums
  with unit spacing; this follows the paper and is tested by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.validate import check_values, reals
from convscope.methods.evaluation._common import BaselineSpec, mixed_scores, score_fn
from convscope.methods.evaluation._prep import metric_baseline, prepare
from convscope.methods.evaluation.curves import pixel_ranks
from convscope.models import LoadedModel

__all__ = ["RoadCurve", "impute", "irof", "road", "superpixels"]

Model = str | nn.Module | LoadedModel

#: neighbour offsets (row, column) and weights of the noisy linear imputation (Rong et al.)
_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
               ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Linear imputation of the removed pixels of one image: each removed pixel equals the
    weighted mean of its in-image neighbours (known or themselves imputed).

    Shape:
        img (C, H, W), removed (H, W) bool -> (C, H, W) float64.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = img.shape
    flat = img.reshape(c, -1).astype(np.float64)
    out = flat.copy()
    ids = np.flatnonzero(removed.ravel())
    if ids.size == 0:
        return out.reshape(c, h, w)
    var = -np.ones(h * w, dtype=np.int64)
    var[ids] = np.arange(ids.size)
    r, q = ids // w, ids % w
    rows, cols, vals = [np.arange(ids.size)], [np.arange(ids.size)], []
    diag = np.zeros(ids.size)
    rhs = np.zeros((ids.size, c))
    for (dr, dc), wt in _NEIGHBOURS:
        rr, qq = r + dr, q + dc
        ok = (rr >= 0) & (rr < h) & (qq >= 0) & (qq < w)
        nb = rr * w + qq
        diag[ok] += wt
        unknown = ok & (var[np.where(ok, nb, 0)] >= 0)
        known = ok & ~unknown
        rhs[known] -= wt * flat[:, nb[known]].T
        rows.append(np.flatnonzero(unknown))
        cols.append(var[nb[unknown]])
        vals.append(np.full(int(unknown.sum()), wt))
    a = coo_matrix((np.concatenate([-diag, *vals]), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(ids.size, ids.size)).tocsc()
    sol = spsolve(a, rhs)
    out[:, ids] = np.asarray(sol).reshape(ids.size, c).T
    return out.reshape(c, h, w)


@dataclass(frozen=True)
class RoadCurve:
    """ROAD results: per image and percentage of pixels removed.

    Attributes:
        order: ``"morf"`` or ``"lerf"``.
        percentages: (P,) the percentages removed.
        correct: (B, P) the model still predicts the target.
        scores: (B, P) the target probability.
        options: the choices made (noise, seed).
    """

    order: str
    percentages: torch.Tensor
    correct: torch.Tensor
    scores: torch.Tensor
    options: dict[str, Any]

    @property
    def accuracy(self) -> torch.Tensor:
        """(P,) accuracy over the batch at each percentage (Quantus's ``ROAD`` output)."""
        return self.correct.float().mean(0)

    @property
    def auc(self) -> torch.Tensor:
        """(B,) mean target probability over the percentages (MoRF: lower is better)."""
        return self.scores.mean(1)


def road(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    order: str = "morf",
    percentages: Any = None,
    noise: float = 0.01,
    batch_size: int | str = "auto",
    seed: int = 0,
    progress: bool | None = None,
) -> RoadCurve:
    """ROAD with noisy linear imputation (see the module docstring).

    Args:
        order: ``"morf"`` (default) or ``"lerf"``.
        percentages: percentages of the pixels removed (default 1, 3, ..., 99 as Quantus).
        noise: standard deviation of the imputation noise, model-space units (default 0.01).
        seed: seeds the imputation noise (one draw per image and percentage) and the tie order.
    """
    from convscope.core.errors import InputError
    from convscope.engines.perturb import evaluate

    if order not in ("morf", "lerf"):
        raise InputError(f"unknown order {order!r}; use 'morf' or 'lerf'")
    check_values(noise=(noise, reals(0)))
    pct = torch.as_tensor(list(range(1, 100, 2)) if percentages is None else percentages,
                          dtype=torch.float64)
    if pct.ndim != 1 or pct.numel() == 0 or not bool(((pct > 0) & (pct < 100)).all()):
        raise InputError("percentages must be numbers strictly between 0 and 100")
    p = prepare(model, x, maps, targets, batch_size)
    b, h, w = p.maps.shape
    ranks = pixel_ranks(p.maps, "most" if order == "morf" else "least", seed).cpu()
    counts = (pct * h * w / 100).long()  # int(N p / 100), as Quantus
    k = pct.numel()
    xs = p.x.detach().double().cpu().numpy()
    f = score_fn("probability")
    rows: list[torch.Tensor] = []

    def make(start: int, stop: int) -> torch.Tensor:
        idx = torch.arange(start, stop)
        rows[:] = [idx // k]
        imgs = []
        for i in idx.tolist():
            j, s = divmod(i, k)
            removed = (ranks[j] < counts[s]).view(h, w).numpy()
            out = impute(xs[j], removed)
            if noise > 0:
                g = np.random.default_rng([seed, i])
                out[:, removed] += noise * g.standard_normal((out.shape[0], int(removed.sum())))
            imgs.append(torch.from_numpy(out))
        return torch.stack(imgs).to(p.x.device, p.x.dtype)

    def reduce(out: torch.Tensor) -> torch.Tensor:
        t = p.targets[rows[0].to(p.targets.device)]
        return torch.stack([f(out, t), (out.argmax(1) == t).float()], 1)

    from convscope.core.hooks import state_guard

    with state_guard(p.net):
        res = evaluate(p.net, make, b * k, reduce, batch_size=batch_size, progress=progress,
                       desc="ROAD").cpu().view(b, k, 2)
    return RoadCurve(order, pct.float(), res[..., 1].bool(), res[..., 0],
                     {"noise": float(noise), "seed": seed, "imputation": "noisy linear"})


def superpixels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) SLIC superpixel labels 0 .. S-1 of each image (scikit-image defaults, as Quantus)."""
    from skimage.segmentation import slic

    arr = x.detach().double().cpu().numpy()
    return torch.stack([torch.from_numpy(slic(np.moveaxis(a, 0, -1), start_label=0).astype(np.int64))
                        for a in arr])


def irof(
    model: Model,
    x: torch.Tensor,
    maps: torch.Tensor,
    *,
    targets: Any = None,
    segments: torch.Tensor | None = None,
    baseline: BaselineSpec = "mean",
    batch_size: int | str = "auto",
    progress: bool | None = None,
) -> torch.Tensor:
    """(B,) IROF: area over the curve of ``f(x_k) / f(x)`` (target probability) as the
    superpixels are removed, most relevant (highest mean) first, over the share of segments
    removed ``k / S``, k = 0 .. S; higher is better.

    Args:
        segments: (B, H, W) integer labels (default: :func:`superpixels`, SLIC).
        baseline: what removed segments become (default ``"mean"``: the image's mean colour).
    """
    p = prepare(model, x, maps, targets, batch_size)
    seg = superpixels(p.x) if segments is None else torch.as_tensor(segments).long()
    if seg.shape != p.maps.shape:
        from convscope.core.errors import InputError

        raise InputError(f"segments {tuple(seg.shape)} do not match maps {tuple(p.maps.shape)}")
    b = seg.shape[0]
    flat = torch.stack([torch.unique(s, return_inverse=True)[1] for s in seg.flatten(1).cpu()])  # 0 .. S-1
    n_seg = flat.amax(1) + 1  # (B,)
    s_max = int(n_seg.max())
    sums = torch.zeros(b, s_max, dtype=torch.float64)
    sums.scatter_add_(1, flat, p.maps.double().flatten(1).cpu())
    ones = torch.ones(flat.shape, dtype=torch.float64)
    sizes = torch.zeros(b, s_max, dtype=torch.float64).scatter_add_(1, flat, ones)
    mean = torch.where(sizes > 0, sums / sizes.clamp(min=1), torch.full_like(sums, -torch.inf))
    order = torch.sort(-mean, dim=1, stable=True).indices  # empty labels last
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s_max).expand(b, -1).contiguous())
    pix_rank = rank.gather(1, flat).to(p.x.device)  # (B, N): step at which each pixel goes
    base = metric_baseline(p.x, baseline, p.lm)
    h, w = p.x.shape[-2:]

    def mask_of(i: torch.Tensor) -> torch.Tensor:
        return (pix_rank[i // (s_max + 1)] >= (i % (s_max + 1))[:, None]).view(-1, h, w)

    out = mixed_scores(p.net, p.x, base, s_max + 1, mask_of, p.targets, batch_size=batch_size,
                       progress=progress, desc="IROF").double().cpu()
    rel = out / out[:, :1].clamp(min=1e-12)
    area = []
    for j in range(b):
        y = rel[j, : int(n_seg[j]) + 1]
        area.append(float(((y[1:] + y[:-1]) / 2).sum() / (y.numel() - 1)))
    return (1 - torch.tensor(area)).float()
