"""The audit's class comparison: a shortcut that most or all of a class carries.

The clusters of :mod:`convscope.methods.dataset._audit` are compared with the class's other clusters,
which finds a shortcut on a minority of the class but not one on most of it: when 93% of a class
carries a marker, the marked maps split into twin clusters that count each other as "the class's
other clusters", and a marker on every image leaves nothing to compare with. So each class as a
whole is also compared with the other classes, on the same ``size x size`` mass maps:

* ``M`` is the class's mean map, ``O`` the cell-wise largest of the other audited classes' mean
  maps. The class's *region* is the smallest box holding ``mass`` of ``max(M - O, 0)``: where
  this class's attribution exceeds that of every other class. (Against the other classes' average,
  the box took in the whole digit: each class's object differs from the average somewhere.)
* *concentration* = (1 - the box's share of the image)^2, as for clusters;
* *consistency* = the median over the class's images of their own share in the box divided by
  ``M(box)``, capped at 1: most of the class uses the region (it stays low when only a minority
  does, which is the clusters' case);
* *exclusivity* = 1 - o / M(box), floored at 0, with ``o`` the largest share in the box among
  the other classes' mean maps: outside the region *any* other class uses. (The median, as for
  clusters, let the top bar of the 7 through: few classes use the top of the image, but the 5
  does. Against the largest it is strict enough not to be squared as the clusters' is: a blurry
  Grad-CAM of a neighbouring digit puts a tenth of its mass beside a corner marker.)

**suspicion = concentration x consistency x exclusivity**; the class is ``suspect`` at
``threshold`` when, in addition, the region holds at least :data:`EXCESS` (a fifth) of the class's
attribution beyond what any other class puts there (``M(box) - o``). Without that floor the
product flagged parts of clean digits: a small box that holds 24% of a 4's attribution where the
other classes hold 10% scores as high as a corner marker that holds 43% against 6%. (Measured on
the bundled models: clean classes reach an excess of 0.16 at most, the planted shortcuts of the
tests 0.22 and more.) Then the *carriers* are the class's images whose own share in the box reaches half
of the 90th percentile of the shares, and every cluster whose median member is a carrier is
flagged "by the class comparison" with the class's region: twin clusters of one shortcut are
judged together. (:func:`convscope.methods.dataset._pixels.class_carriers` then adds the images that carry
the region's pixels though their maps do not show it, and settles which clusters are flagged.)
Of such a cluster, the flagged images (``AuditCluster.flagged``) are its
carriers only: a cluster of digit shapes in which most images carry the marker does not flag
the few that do not. What sets a class apart from the others is often the object itself (the bar of
a 7); that is why a suspect is then tested by intervention (:mod:`convscope.methods.dataset._intervene`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convscope.methods.dataset import _spectral as sp

__all__ = ["EXCESS", "ClassComparison", "compare_class", "compare_classes"]

#: The share of its attribution that a suspect class's region must hold beyond any other class's.
EXCESS = 0.2


@dataclass
class ClassComparison:
    """One class compared with the other audited classes (see the module docstring)."""

    box: list[int]
    grid_box: sp.Box
    mass_share: float
    others_share: float
    box_area: float
    concentration: float
    consistency: float
    exclusivity: float
    suspicion: float
    suspect: bool
    cut: float
    carriers: int
    n: int
    reading: str = ""

    def __repr__(self) -> str:
        return (f"ClassComparison(box={self.box}, suspicion={self.suspicion:.2f}, suspect={self.suspect}, "
                f"carriers={self.carriers}/{self.n})")

    def to_dict(self) -> dict[str, Any]:
        def r(v: float) -> float:
            return float(round(float(v), 4))

        return {"box": list(self.box), "mass_share": r(self.mass_share), "others_share": r(self.others_share),
                "box_area": r(self.box_area), "concentration": r(self.concentration),
                "consistency": r(self.consistency), "exclusivity": r(self.exclusivity),
                "suspicion": r(self.suspicion), "suspect": bool(self.suspect), "cut": r(self.cut),
                "carriers": int(self.carriers), "reading": self.reading}


def compare_class(
    maps: np.ndarray, other_means: list[np.ndarray], *, mass: float, threshold: float, min_cluster: int,
    image_size: tuple[int, int], name: str,
) -> tuple[ClassComparison, np.ndarray] | None:
    """Compare one class's ``maps`` (n, s, s) with the other classes' mean maps.

    Returns:
        The comparison and each image's own share in the region (n,); ``None`` without another class.
    """
    if not other_means:
        return None
    side = maps.shape[1]
    x = maps.astype(np.float64)
    mean = x.mean(0)
    others = np.max(other_means, axis=0)  # what any other class puts on each cell
    box = sp.mass_box(np.maximum(mean - others, 0.0), mass)
    share = float(sp.box_mass(mean[None], box)[0])
    o = float(sp.box_mass(np.asarray(other_means, dtype=np.float64), box).max())
    own = sp.box_mass(x, box)
    consistency = min(1.0, float(np.median(own)) / share) if share > 0 else 0.0
    exclusivity = 0.0 if share <= 0 else float(np.clip(1 - o / share, 0, 1))
    area = box.area(side)
    concentration = (1.0 - area) ** 2
    suspicion = concentration * consistency * exclusivity
    cut = 0.5 * float(np.quantile(own, 0.9))
    carriers = int((own >= cut).sum()) if cut > 0 else 0
    h, w = image_size
    px = box.scaled(side, w, h)
    cmp = ClassComparison(
        box=px, grid_box=box, mass_share=share, others_share=o, box_area=area, concentration=concentration,
        consistency=consistency, exclusivity=exclusivity, suspicion=suspicion,
        suspect=bool(suspicion >= threshold and share - o >= EXCESS and carriers >= min_cluster), cut=cut,
        carriers=carriers,
        n=len(x),
    )
    x0, y0, x1, y1 = px
    where = sp.where(box, side)
    cmp.reading = (f"class {name} as a whole: {share:.0%} of its attribution in the {where} "
                   f"{x1 - x0}x{y1 - y0} px box (x {x0}-{x1}, y {y0}-{y1}), "
                   f"the other classes at most {o:.0%}; "
                   f"{carriers} of {len(x)} images carry it")
    return cmp, own


def compare_classes(results: list[Any], small: np.ndarray, cfg: Any,
                     image_size: tuple[int, int]) -> None:
    """Each clustered class against the other classes (:mod:`convscope.methods.dataset._compare`); the
    clusters whose typical member carries a suspect class's region are flagged ``"class"``."""
    means = {c.index: small[c.members].astype(np.float64).mean(0) for c in results if c.clusters}
    for c in results:
        if not c.clusters:
            continue
        got = compare_class(small[c.members], [m for j, m in means.items() if j != c.index], mass=cfg.mass,
                            threshold=cfg.threshold, min_cluster=cfg.min_cluster, image_size=image_size,
                            name=c.name)
        if got is None:
            continue
        c.comparison, own = got
        if not c.comparison.suspect:
            continue
        pos = {int(r): k for k, r in enumerate(c.members)}
        for cl in c.clusters:
            mine = own[[pos[int(m)] for m in cl.members]]
            if float(np.median(mine)) >= c.comparison.cut and cl.size >= cfg.min_cluster:
                if "cluster" not in cl.flagged_by:  # only its members that carry the region
                    cl.carriers = cl.members[mine >= c.comparison.cut]
                cl.flagged_by.append("class")
                cl.suspect = True
                cl.reading += f"; {c.comparison.reading} (flagged by the class comparison)"
