"""One suspect cluster of the audit described: its members, its typical image and map, the box
where its relevance sits, and the one-line reading of what it may be."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from convscope.methods.dataset import _spectral as sp
from convscope.methods.dataset._audit_result import AuditCluster

if TYPE_CHECKING:
    from convscope.methods.dataset._settings import AuditSettings


def _describe(
    j: int, idx: np.ndarray, assign: np.ndarray, small: np.ndarray, probs: np.ndarray,
    paths: list[str] | None, ci: int, name: str, cfg: AuditSettings, *, image_size: tuple[int, int],
    side: int,
) -> AuditCluster:
    sel = assign == j
    members = idx[sel]
    maps = small[members].astype(np.float64)
    mean = maps.mean(0)
    others = small[idx[~sel]].astype(np.float64).mean(0) if (~sel).any() else None
    if others is None:  # nothing to compare with: the region is the cluster's own mass box
        box = sp.mass_box(mean, cfg.mass)
    else:  # the region where this cluster's attribution exceeds the others'
        box = sp.mass_box(np.maximum(mean - others, 0.0), cfg.mass)
    share = float(sp.box_mass(mean[None], box)[0])
    if others is None:
        other_share = float("nan")
    else:  # the typical other cluster: a strategy split in two does not hide behind its twin
        per = [sp.box_mass(small[idx[assign == o]].astype(np.float64).mean(0)[None], box)[0]
               for o in range(int(assign.max()) + 1) if o != j]
        other_share = float(np.median(per))
    consistency = min(1.0, float(np.median(sp.box_mass(maps, box))) / share) if share > 0 else 0.0
    exclusivity = 0.0 if others is None or share <= 0 else float(np.clip(1 - other_share / share, 0, 1)) ** 2
    area = box.area(side)
    concentration = (1.0 - area) ** 2
    suspicion = concentration * consistency * exclusivity
    h, w = image_size
    px = box.scaled(side, w, h)
    pr = probs[members, 0]  # probability of the class
    pred = probs[members, 1] > 0.5  # the class was the prediction
    d = ((maps - mean) ** 2).sum((1, 2))
    proto = [int(members[i]) for i in np.argsort(d, kind="stable")[:cfg.prototypes]]
    cl = AuditCluster(
        id=j, members=members, paths=None if paths is None else [paths[i] for i in members],
        class_size=len(idx), box=px, mass_share=share, others_share=other_share, box_area=area,
        concentration=concentration,
        consistency=consistency, exclusivity=exclusivity, suspicion=suspicion,
        suspect=bool(suspicion >= cfg.threshold and len(members) >= cfg.min_cluster), reading="",
        mean_probability=float(np.nanmean(pr)) if len(pr) else float("nan"),
        predicted_share=float(pred.mean()), prototypes=proto, class_name=name,
    )
    cl.reading = _reading(cl, name, side, box)
    if cl.suspect:
        cl.flagged_by.append("cluster")
        cl.reading += " (flagged against the class's other clusters)"
    return cl


def _reading(cl: AuditCluster, name: str, side: int, box: sp.Box) -> str:
    x0, y0, x1, y1 = cl.box
    where = sp.where(box, side)
    region = "the whole image" if cl.box_area >= 0.999 else f"the {where} {x1 - x0}x{y1 - y0} px box"
    text = (f"{cl.size} of {cl.class_size} images of class {name}: {cl.mass_share:.0%} of the "
            f"attribution in {region} (x {x0}-{x1}, y {y0}-{y1})")
    if not np.isnan(cl.others_share):
        text += f"; the class's other clusters {cl.others_share:.0%}"
    else:
        text += "; one strategy for the whole class, nothing to set it apart from"
    return text
