"""The web app's before/after strip of a suspect's intervention (``/api/audit/intervention/...``).

Rebuilt from ``audit.json``: each example names a suspect image and the image of another class it
was paired with; both are read as the audit view reads any image, and the region is swapped with
:func:`convscope.methods.dataset._intervene.before_after`, as the audit did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["intervention_png"]


def render_intervention(view: Any, class_index: int, cluster_id: int) -> Any:
    """A PIL image: per example, the suspect image, it with the region removed, the other-class
    image, it with the region pasted (region outlined outside in red)."""
    from PIL import Image

    from convscope.frontends.serve.audit import NotInAudit
    from convscope.methods.dataset._audit_report import outlined
    from convscope.methods.dataset._intervene import before_after

    cl = view.cluster(class_index, cluster_id)
    iv = cl.get("intervention") or {}
    if not iv.get("applied") or not iv.get("examples"):
        raise NotInAudit(f"cluster {cluster_id} of class {class_index} has no intervention to show"
                         + (f": {iv['why_not']}" if iv.get("why_not") else ""))
    tiles = []
    for e in iv["examples"]:
        a, b = view.pixels(int(e["member"])), view.pixels(int(e["donor"]))
        if a is None or b is None:
            raise NotInAudit(f"the intervention's images cannot be read: {view.images_note}")
        wide = iv.get("removed_box") or iv["box"]
        removed, pasted = before_after(a, b, iv["box"], wide, iv["fill"])
        tiles.append([outlined(np.asarray(x, dtype=np.float64), bx)
                      for x, bx in ((a, iv["box"]), (removed, wide), (b, iv["box"]), (pasted, iv["box"]))])
    w, h = tiles[0][0].size
    gap = 6
    out = Image.new("RGB", (4 * w + 3 * gap, len(tiles) * h + (len(tiles) - 1) * gap), "white")
    for r, row in enumerate(tiles):
        for c, img in enumerate(row):
            out.paste(img, (c * (w + gap), r * (h + gap)))
    return out


def intervention_png(view: Any, class_index: str | int, cluster_id: str | int) -> bytes:
    """PNG of :func:`render_intervention`, from the view's cache or rendered as a light job."""
    view.cluster(class_index, cluster_id)
    key = (int(str(class_index)), int(str(cluster_id)))
    return view._png(("intervention", *key), False, lambda _expired: render_intervention(view, *key))
