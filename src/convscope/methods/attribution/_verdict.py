"""One verdict on whether an explanation can be trusted, read from its own diagnostics.

Every front end (the Python warning, the CLI line, the report badge, the web app) reads the one
verdict this module writes into the result's diagnostics:

* ``diagnostics["reliable"]``: one ``bool`` per image;
* ``diagnostics["unreliable_because"]``: one reason per image (``None`` where reliable).

The rules, with their documented thresholds (``docs/methods.md``, "When a result warns"):

* ``reliability`` (RISE, LIME, Kernel SHAP: the split-half prediction of the correlation of two
  independent runs' maps) below :data:`MIN_RELIABILITY`: the map is mostly sampling noise.
* ``local_r2`` (LIME: R^2 of the weighted linear surrogate on its samples) below
  :data:`MIN_LOCAL_R2`: the surrogate does not describe the model near the image.
* ``completeness_rel_gap`` (integrated gradients: ``|sum IG - (F(x) - F(x'))| / |F(x) - F(x')|``)
  above :data:`MAX_COMPLETENESS_GAP` (Sundararajan et al. 2017 suggest 5 %): too few steps.
* ``layer_grid`` (CAMs: the spatial size of each layer's map) of 1x1: the CAM is constant.
* any method: a constant map (largest minus smallest value at most :data:`FLAT` of the largest
  magnitude): it shows nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from convscope.core.errors import UnreliableResultWarning

__all__ = ["FLAT", "MAX_COMPLETENESS_GAP", "MIN_LOCAL_R2", "MIN_RELIABILITY", "verdict", "warn_unreliable"]

#: the predicted run-to-run correlation below which a sampled map is called unreliable.
MIN_RELIABILITY = 0.5
#: LIME's surrogate R^2 below which its weights are called unreliable.
MIN_LOCAL_R2 = 0.2
#: the integrated-gradients relative completeness gap above which the map is called unreliable.
MAX_COMPLETENESS_GAP = 0.05
#: a map whose range is at most this share of its largest magnitude is constant.
FLAT = 1e-6


def _per_image(value: Any, n: int) -> list[float | None]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    if isinstance(value, Sequence) and len(value) == n:
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in value]
    return [None] * n


def _number_rules(diagnostics: dict[str, Any], n: int) -> list[list[str]]:
    reasons: list[list[str]] = [[] for _ in range(n)]
    for j, r in enumerate(_per_image(diagnostics.get("reliability"), n)):
        if r is not None and not math.isnan(r) and r < MIN_RELIABILITY:
            reasons[j].append(f"two runs would agree only to correlation {r:.2f} (< {MIN_RELIABILITY}): the "
                              "map is mostly sampling noise; raise n_masks/n_samples or try another baseline")
    for j, r2 in enumerate(_per_image(diagnostics.get("local_r2"), n)):
        if r2 is not None and not math.isnan(r2) and r2 < MIN_LOCAL_R2:
            reasons[j].append(f"the surrogate fits the model with R^2 {r2:.2f} (< {MIN_LOCAL_R2}): its "
                              "weights do not describe the model here; try other segments or kernel_width")
    for j, g in enumerate(_per_image(diagnostics.get("completeness_rel_gap"), n)):
        if g is not None and not math.isnan(g) and g > MAX_COMPLETENESS_GAP:
            reasons[j].append(f"the completeness gap is {g:.1%} of F(x) - F(baseline) (> "
                              f"{MAX_COMPLETENESS_GAP:.0%}): raise steps")
    return reasons


def verdict(diagnostics: dict[str, Any], amap: torch.Tensor) -> tuple[list[bool], list[str | None]]:
    """Whether each image's explanation is reliable, and why not, from its diagnostics and map.

    Args:
        diagnostics: the method's diagnostics (per-image lists or one value for the batch).
        amap: the final map.

    Shape:
        amap: (B, H, W).

    Returns:
        (``reliable`` per image, the reason per image or ``None``), as stored under
        ``diagnostics["reliable"]`` and ``diagnostics["unreliable_because"]``.
    """
    n = int(amap.shape[0])
    reasons = _number_rules(diagnostics, n)
    grids = diagnostics.get("layer_grid")
    flat_layers = [k for k, hw in grids.items() if math.prod(hw) == 1] if isinstance(grids, dict) else []
    if isinstance(grids, dict) and len(flat_layers) < len(grids):  # other layers give the map its shape
        flat_layers = []
    flat = amap.detach().flatten(1)
    # max and min are exact in the map's dtype: read them as Python floats (float64) and subtract
    # there, the same numbers as converting the whole map to float64 first; the largest magnitude
    # is max(|max|, |min|) (a NaN makes the span NaN, which is called constant below)
    his, los = flat.amax(1).tolist(), flat.amin(1).tolist()
    for j, (hi, lo) in enumerate(zip(his, los, strict=True)):
        span, size = hi - lo, max(abs(hi), abs(lo))
        if flat_layers:
            reasons[j].append(f"layer {', '.join(flat_layers)} has a 1x1 spatial map, so the CAM is "
                              "constant; pick an earlier layer (`convscope layers MODEL` lists their sizes)")
        elif span <= FLAT * size or not math.isfinite(span):
            reasons[j].append("the map is constant: it shows nothing (no region raises the target's score, "
                              "e.g. a CAM's ReLU removed only negative evidence, or the score does not "
                              "change with the input here)")
    return [not r for r in reasons], ["; ".join(r) if r else None for r in reasons]


def warn_unreliable(method: str, because: Sequence[str | None]) -> None:
    """One :class:`~convscope.core.errors.UnreliableResultWarning` naming the unreliable images of a
    batch and why (nothing when every image is reliable)."""
    import warnings

    bad = [(j, r) for j, r in enumerate(because) if r]
    if not bad:
        return
    where = "; ".join(f"image {j}: {r}" for j, r in bad[:3])
    if len(bad) > 3:
        where += f"; and {len(bad) - 3} more"
    warnings.warn(f"{method} result unreliable for {len(bad)} of {len(because)} image(s) - {where}",
                  UnreliableResultWarning, stacklevel=3)
