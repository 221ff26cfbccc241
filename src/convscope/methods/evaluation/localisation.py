"""Localisation metrics: does the map lie on the ground-truth region? (No model needed.)

Regions are (B, H, W) boolean masks, neither empty nor the whole image (boxes:
:func:`convscope.methods.evaluation.pointing.boxes_to_masks`). Every score is per image; **higher is
better** for all of them.

* :func:`top_k_intersection` (Theiner et al., "Interpretable Semantic Photo Geolocation", WACV 2022).
* :func:`relevance_rank_accuracy` and :func:`relevance_mass_accuracy` (Arras, Osman and Samek,
  "CLEVR-XAI", Information Fusion 2022).
* :func:`attribution_localisation` (Kohlbrenner et al., "Towards Best Practice in Explaining
  Neural Network Decisions with LRP", IJCNN 2020).
* :func:`localisation_auc`: ROC AUC of the map as a pixel classifier of the region (Fawcett 2006).
* :func:`focus` (Arias-Duart et al., "Focus! Rating XAI Methods and Finding Biases", FUZZ-IEEE
  2022) on 2 x 2 mosaics (:func:`mosaic`).
* The pointing games are in :mod:`.pointing`.
"""

from __future__ import annotations

from typing import Any

import torch

from convscope.core.errors import InputError
from convscope.core.validate import check_values, ints
from convscope.methods.evaluation._prep import check_finite, check_masks
from convscope.methods.evaluation.curves import pixel_ranks
from convscope.methods.evaluation.pointing import cue_mass

__all__ = [
    "attribution_localisation",
    "focus",
    "localisation_auc",
    "mosaic",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
]

#: top_k_intersection's default share of the pixels (Theiner et al.: k = 1000 of 224 x 224)
TOP_K_SHARE = 0.02


def _pair(maps: Any, masks: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = check_finite(maps)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise InputError(f"maps must be a (B, H, W) batch, got shape {tuple(m.shape)}")
    return m.detach().double(), check_masks(m, masks, what)


def top_k_intersection(maps: torch.Tensor, masks: torch.Tensor, k: int | None = None, *,
                       concept_influence: bool = False, seed: int = 0) -> torch.Tensor:
    """(B,) share of the ``k`` highest-attributed pixels that lie in the mask:
    ``|top_k(a) cap S| / k`` (with ``concept_influence``: times ``N / |S|``, 1 = chance).

    Args:
        k: pixels counted (default: 2% of the pixels, rounded, at least 1 — Theiner et al.'s 1000
            of 224 x 224).
        seed: order of pixels with equal attribution.
    """
    m, s = _pair(maps, masks, "top_k_intersection")
    n = m[0].numel()
    k = max(1, round(TOP_K_SHARE * n)) if k is None else k
    check_values(k=(k, ints(1, n)))
    top = pixel_ranks(m, "most", seed) < k
    score = (top & s.flatten(1)).sum(1).double() / k
    if concept_influence:
        score = score * n / s.flatten(1).sum(1)
    return score.float()


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor, *,
                            seed: int = 0) -> torch.Tensor:
    """(B,) share of the ``K = |S|`` highest-attributed pixels inside the mask ``S``:
    ``|top_K(a) cap S| / K``."""
    m, s = _pair(maps, masks, "relevance_rank_accuracy")
    sf = s.flatten(1)
    size = sf.sum(1, keepdim=True)
    top = pixel_ranks(m, "most", seed) < size
    return ((top & sf).sum(1).double() / size[:, 0]).float()


def relevance_mass_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) ``sum_{i in S} a_i / sum_i a_i`` (signed maps as given; 0 where the total is 0).

    On non-negative maps it is :func:`attribution_localisation`."""
    m, s = _pair(maps, masks, "relevance_mass_accuracy")
    total = m.flatten(1).sum(1)
    inside = (m * s).flatten(1).sum(1)
    return torch.where(total != 0, inside / torch.where(total != 0, total, 1.0), 0.0).float()


def attribution_localisation(maps: torch.Tensor, masks: torch.Tensor, *,
                             weighted: bool = False) -> torch.Tensor:
    """(B,) share of the *positive* attribution inside the mask, ``mu = R_in+ / R_tot+``; with
    ``weighted``, ``mu * N / |S|`` (Kohlbrenner et al. eq. 4: 1 means chance).

    Quantus 0.6.0 weights by ``|S| / size`` where ``size`` is a wrong count (``x_batch[2:].size``,
    images from the third on) and the ratio is inverted; this follows the paper (tested by hand).
    The unweighted score is the energy pointing game (:func:`.pointing.cue_mass`).
    """
    m, s = _pair(maps, masks, "attribution_localisation")
    mu = cue_mass(m, s).double()
    if weighted:
        mu = mu * s[0].numel() / s.flatten(1).sum(1)
    return mu.float()


def localisation_auc(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) ROC AUC of the map's values as a score for "pixel in the mask": the probability that a
    pixel in the mask outranks one outside (ties count half; Mann-Whitney). 0.5 is chance."""
    from scipy.stats import rankdata

    m, s = _pair(maps, masks, "localisation_auc")
    r = torch.from_numpy(rankdata(m.flatten(1).cpu().numpy(), axis=1, method="average"))
    sf = s.flatten(1).cpu()
    pos = sf.sum(1).double()
    neg = sf.shape[1] - pos
    u = (r * sf).sum(1) - pos * (pos + 1) / 2
    return (u / (pos * neg)).float()


def mosaic(images: torch.Tensor, labels: torch.Tensor, target: int, *, n: int = 1,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 2 x 2 mosaics, each with two images of class ``target`` and two of other classes in
    random quadrants, and which quadrants (top-left, top-right, bottom-left, bottom-right) hold
    the target class.

    Shape:
        images (M, C, H, W), labels (M,) -> mosaics (n, C, 2H, 2W), quadrants (n, 4) bool.
    """
    check_values(n=(n, ints(1)))
    lab = torch.as_tensor(labels).reshape(-1)
    pos, neg = (lab == target).nonzero()[:, 0], (lab != target).nonzero()[:, 0]
    if len(pos) < 2 or len(neg) < 2:
        raise InputError(f"a mosaic needs two images of class {target} and two of other classes")
    g = torch.Generator().manual_seed(seed)
    out, quads = [], []
    for _ in range(n):
        two_pos = pos[torch.randperm(len(pos), generator=g)[:2]]
        pick = torch.cat([two_pos, neg[torch.randperm(len(neg), generator=g)[:2]]])
        order = torch.randperm(4, generator=g)
        tiles = images[pick[order]]
        out.append(torch.cat([torch.cat([tiles[0], tiles[1]], -1), torch.cat([tiles[2], tiles[3]], -1)], -2))
        quads.append(order < 2)
    return torch.stack(out), torch.stack(quads)


def focus(maps: torch.Tensor, quadrants: torch.Tensor) -> torch.Tensor:
    """(B,) share of the positive attribution in the mosaic quadrants that hold the target class
    (``quadrants`` (B, 4) bool: top-left, top-right, bottom-left, bottom-right); 0.5 is chance for
    two target quadrants of four."""
    m = check_finite(maps).detach().double()
    q = torch.as_tensor(quadrants).bool()
    if m.ndim != 3 or q.shape != (m.shape[0], 4):
        raise InputError(f"focus takes maps (B, H, W) and quadrants (B, 4), got {tuple(m.shape)} and "
                         f"{tuple(q.shape)}")
    h, w = m.shape[-2] // 2, m.shape[-1] // 2
    mask = torch.zeros(m.shape, dtype=torch.bool)
    for i, (rs, cs) in enumerate(((slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)),
                                  (slice(h, None), slice(0, w)), (slice(h, None), slice(w, None)))):
        mask[:, rs, cs] = q[:, i, None, None]
    return cue_mass(m, mask.to(m.device)).float()


