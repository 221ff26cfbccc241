"""The audit's proof by intervention: edit a suspect's region and watch the model's predictions.

For a suspect cluster of class ``c`` with region ``box`` (input pixels), every member ``i`` is
paired with a *donor*: an audited image of another class that the model does not predict as
``c`` (seeded order, cycled when there are fewer donors than members). Two edited images per
member, one batched forward pass each:

* **removed**: the member with its box, widened by :data:`MARGIN` on each side, filled
  (``fill``): ``"others"`` the donor's pixels in the same box; ``"blur"`` the member's own
  pixels blurred (box filter as wide as the box); ``"surround"`` the mean of the member's pixels
  in a ring around the box (its own surroundings, per channel);
* **pasted**: the donor with the member's box pasted in.

A removal *flips* a member that the model predicted as ``c`` and no longer does; a paste flips a
donor that is now predicted as ``c``. The suspect is **confirmed** when pasting the region flips
at least ``confirm`` of the donors: the region carries the class by itself, whatever the image
around it. Removal alone does not confirm (taking away part of the object, e.g. the bar of a 7,
also changes the prediction), but is reported beside it. An intervention cannot be applied when
the widened region covers at least half of the image (there would be nothing left of the image to keep),
when ``fill="surround"`` has no pixels around the box, or when no donor exists; it says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FILLS", "Intervention", "before_after", "edit_region", "intervene", "intervene_all", "prob_of"]

FILLS = ("others", "blur", "surround", "none")
#: A region covering this share of the image or more is not edited.
MAX_AREA = 0.5
#: Before/after pairs kept per suspect for the report and the app.
EXAMPLES = 3


@dataclass
class Intervention:
    """What editing a suspect's region did to the model (see :mod:`convscope.methods.dataset._intervene`).

    Counts are images; probabilities are means of p(class) over the edited images.
    """

    box: list[int]
    fill: str
    applied: bool
    why_not: str = ""
    removed_box: list[int] = field(default_factory=list)
    removed_n: int = 0
    removed_before: int = 0
    removed_flips: int = 0
    removed_p_before: float = float("nan")
    removed_p_after: float = float("nan")
    pasted_n: int = 0
    pasted_flips: int = 0
    pasted_p_before: float = float("nan")
    pasted_p_after: float = float("nan")
    confirm: float = 0.5
    examples: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def confirmed(self) -> bool:
        """Pasting the region flipped at least ``confirm`` of the donors."""
        return bool(self.applied and self.pasted_n > 0 and self.pasted_flips >= self.confirm * self.pasted_n)

    def sentence(self, name: str) -> str:
        """One line: what removing and pasting the region did, and the verdict."""
        if not self.applied:
            return f"intervention not applied: {self.why_not}"
        how = {"others": "by the same box of other-class images", "blur": "by a blur",
               "surround": "by the image's own surroundings"}[self.fill]
        x0, y0, x1, y1 = self.removed_box
        return (f"replacing the {x1 - x0}x{y1 - y0} px box around the region {how} flips "
                f"{self.removed_flips} of {self.removed_before} "
                f"predictions of {name} (p {self.removed_p_before:.2f} -> {self.removed_p_after:.2f}); "
                f"pasting the region ({self.box[2] - self.box[0]}x{self.box[3] - self.box[1]} px) into "
                f"{self.pasted_n} images of other classes flips {self.pasted_flips} of them "
                f"to {name} (p {self.pasted_p_before:.2f} -> {self.pasted_p_after:.2f}): "
                + ("confirmed" if self.confirmed else
                   "unconfirmed (the region does not carry the class by itself)"))

    def to_dict(self) -> dict[str, Any]:
        def r(v: float) -> float | None:
            return None if not np.isfinite(v) else float(round(float(v), 4))

        return {
            "box": list(self.box), "removed_box": list(self.removed_box), "fill": self.fill,
            "applied": self.applied, "why_not": self.why_not,
            "confirmed": self.confirmed, "confirm": self.confirm,
            "removed": {"n": self.removed_n, "predicted_before": self.removed_before,
                        "flips": self.removed_flips, "p_before": r(self.removed_p_before),
                        "p_after": r(self.removed_p_after)},
            "pasted": {"n": self.pasted_n, "flips": self.pasted_flips, "p_before": r(self.pasted_p_before),
                       "p_after": r(self.pasted_p_after)},
            "examples": [{k: v for k, v in e.items() if k in ("member", "donor")} for e in self.examples],
        }


def _ring(h: int, w: int, box: list[int]) -> torch.Tensor:
    """(H, W) bool: the pixels within one box-width around ``box`` but outside it, in the image."""
    x0, y0, x1, y1 = box
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    m = torch.zeros(h, w, dtype=torch.bool)
    m[max(0, y0 - bh):min(h, y1 + bh), max(0, x0 - bw):min(w, x1 + bw)] = True
    m[y0:y1, x0:x1] = False
    return m


def edit_region(
    x: torch.Tensor, box: list[int], fill: str, donor: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` (b, C, H, W) with ``box`` ([x0, y0, x1, y1], exclusive ends) filled; a new tensor.

    ``fill="others"`` takes the box from ``donor`` (same shape: the paste is the same call with
    the roles swapped); ``"blur"`` a box filter of the box's size over ``x``; ``"surround"`` the
    per-channel mean of :func:`_ring` of ``x``.
    """
    x0, y0, x1, y1 = box
    out = x.clone()
    if fill == "others":
        assert donor is not None
        out[..., y0:y1, x0:x1] = donor[..., y0:y1, x0:x1]
    elif fill == "blur":
        kh, kw = (y1 - y0) | 1, (x1 - x0) | 1  # odd, so the blur stays centred
        blurred = F.avg_pool2d(x, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=False)
        out[..., y0:y1, x0:x1] = blurred[..., y0:y1, x0:x1]
    elif fill == "surround":
        ring = _ring(x.shape[-2], x.shape[-1], box).to(x.device)
        mean = x[..., ring].mean(-1)  # (b, C)
        out[..., y0:y1, x0:x1] = mean[..., None, None]
    else:
        raise ValueError(f"unknown fill {fill!r}")
    return out


#: The region is widened by this share of its width and height on each side before it is removed.
MARGIN = 0.5


def widen(box: list[int], image_size: tuple[int, int]) -> list[int]:
    """``box`` grown by :data:`MARGIN` of its size on each side, within the image: a map's region
    is coarse (Grad-CAM's cells are 4 px on a 32 px digit) and missed the top row of the corner
    ring of ``digits-marker``, which kept the model saying "3". Only the removal is widened: a
    wider paste carries parts of the object along, and then confirmed parts of clean digits."""
    h, w = image_size
    x0, y0, x1, y1 = box
    mx, my = int(np.ceil(MARGIN * (x1 - x0))), int(np.ceil(MARGIN * (y1 - y0)))
    return [max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)]


def cannot_apply(box: list[int], image_size: tuple[int, int], fill: str) -> str:
    """Why the intervention cannot edit ``box`` (empty when it can)."""
    h, w = image_size
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0) / float(h * w)
    if fill == "none":
        return "interventions are off (intervention='none')"
    if area >= MAX_AREA:
        return (f"the region (with its margin) covers {area:.0%} of the image: replacing it would "
                "replace the image, not a detail of it")
    if x1 <= x0 or y1 <= y0:
        return "the region is empty"
    if fill == "surround" and not _ring(h, w, box).any():
        return "the region has no surroundings in the image to fill it from"
    return ""


@torch.no_grad()
def intervene(
    model: torch.nn.Module, src: Any, members: np.ndarray, member_p: np.ndarray, donors: np.ndarray,
    donor_p: np.ndarray, box: list[int], model_class: int, *, fill: str, confirm: float,
    image_size: tuple[int, int], device: torch.device, batch_size: int, seed: int,
) -> Intervention:
    """Remove ``box`` from the ``members`` (rows of ``src``) and paste it into ``donors``.

    Args:
        model: the scores model (in eval mode, under the caller's state guard).
        src: the audit's data source (``src[i][0]`` the model input of row ``i``).
        members: rows of the suspect cluster.
        member_p: (n, 2) per member p(``model_class``) and whether it was the prediction, before.
        donors: candidate rows of other classes not predicted as ``model_class``.
        donor_p: p(``model_class``) of each donor before the edit (from the maps' store).
        box: the region in input pixels.
        model_class: the class whose prediction is watched.
        fill: how the region is removed (see the module docstring).
        confirm: the share of flipped donors that confirms.
        image_size: (H, W) of the inputs.
        device: where the model runs.
        batch_size: images per forward pass.
        seed: the donors' order.
    """
    wide = widen(box, image_size)
    why = cannot_apply(wide, image_size, fill)
    if not why and len(donors) == 0:
        why = "no image of another class that the model does not already call this class, to swap with"
    if why:
        return Intervention(box=list(box), fill=fill, applied=False, why_not=why, confirm=confirm,
                            removed_box=wide)
    order = np.random.default_rng(seed).permutation(len(donors))
    pick = order[np.arange(len(members)) % len(order)]
    pair = donors[pick]
    p_rem = np.empty((len(members), 2), np.float32)  # p(class) and predicted-as-class, after removal
    p_pas = np.empty((len(members), 2), np.float32)
    examples: list[dict[str, Any]] = []
    for lo in range(0, len(members), batch_size):
        hi = min(len(members), lo + batch_size)
        x = torch.stack([src[int(i)][0] for i in members[lo:hi]])
        d = torch.stack([src[int(j)][0] for j in pair[lo:hi]])
        removed = edit_region(x, wide, fill, d)
        pasted = edit_region(d, box, "others", x)
        for out, batch in ((p_rem, removed), (p_pas, pasted)):
            p = torch.softmax(model(batch.to(device)).float(), 1).cpu()
            out[lo:hi, 0] = p[:, model_class].numpy()
            out[lo:hi, 1] = (p.argmax(1) == model_class).numpy()
        if len(examples) < EXAMPLES:
            examples += _examples(src, members[lo:hi], pair[lo:hi], (box, wide), fill, p_rem[lo:hi],
                                  p_pas[lo:hi], EXAMPLES - len(examples))
    was = member_p[:, 1] > 0.5
    return Intervention(
        box=list(box), fill=fill, applied=True, confirm=confirm, removed_box=wide,
        removed_n=len(members), removed_before=int(was.sum()),
        removed_flips=int((was & (p_rem[:, 1] < 0.5)).sum()),
        removed_p_before=float(member_p[:, 0].mean()), removed_p_after=float(p_rem[:, 0].mean()),
        pasted_n=len(members), pasted_flips=int(p_pas[:, 1].sum()),
        pasted_p_before=float(np.mean(donor_p[pick])), pasted_p_after=float(p_pas[:, 0].mean()),
        examples=examples,
    )


def before_after(a: np.ndarray, b: np.ndarray, box: list[int], removed_box: list[int],
                 fill: str) -> tuple[np.ndarray, np.ndarray]:
    """The two edits of one pair of display images (H, W, 3): the suspect image ``a`` with
    ``removed_box`` filled by ``fill`` (the donor ``b``'s pixels for ``"others"``), and the donor
    with ``box`` pasted from ``a``. The audit, its report and the web app show these."""
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).permute(2, 0, 1)[None]
    removed = edit_region(ta, removed_box, fill, tb)[0].permute(1, 2, 0).numpy()
    pasted = edit_region(tb, box, "others", ta)[0].permute(1, 2, 0).numpy()
    return removed, pasted


def _examples(src: Any, members: np.ndarray, pair: np.ndarray, boxes: tuple[list[int], list[int]], fill: str,
              p_rem: np.ndarray, p_pas: np.ndarray, n: int) -> list[dict[str, Any]]:
    """The first ``n`` pairs as display pixels (H, W, 3): member before/after removal, donor
    before/after the paste, with p(class) after each edit."""
    out = []
    for k in range(min(n, len(members))):
        a = np.asarray(src.pixels(int(members[k])), dtype=np.float32)
        b = np.asarray(src.pixels(int(pair[k])), dtype=np.float32)
        rem, pas = before_after(a, b, boxes[0], boxes[1], fill)
        out.append({"member": int(members[k]), "donor": int(pair[k]), "before": a,
                    "removed": rem, "donor_before": b, "pasted": pas,
                    "p_removed": float(p_rem[k, 0]), "p_pasted": float(p_pas[k, 0])})
    return out


def prob_of(prob_arr: Any, st: Any, rows: np.ndarray, cls: int) -> np.ndarray:
    """p(``cls``) of the store's ``rows`` (sorted), read one chunk at a time."""
    out = np.empty(len(rows), dtype=np.float32)
    for c in range(st.n_chunks):
        lo, hi = st.rows(c)
        sel = np.flatnonzero((rows >= lo) & (rows < hi))
        if len(sel):
            out[sel] = np.asarray(prob_arr[lo:hi])[rows[sel] - lo, cls]
    return out


def intervene_all(results: list[Any], lm: Any, src: Any, probs: np.ndarray, pred: np.ndarray,
                   prob_arr: Any, st: Any, run_labels: np.ndarray, cfg: Any, job: Any,
                   image_size: tuple[int, int]) -> None:
    """Every suspect cluster's intervention (:mod:`convscope.methods.dataset._intervene`), batched: two
    forward passes per member (its sentence is the cluster's ``evidence``)."""
    from convscope.core.hooks import state_guard
    from convscope.data.stream import model_device

    todo = [(c, cl) for c in results for cl in c.clusters if cl.suspect]
    if not todo:
        return
    device = model_device(lm.model)
    with state_guard(lm.model):
        for c, cl in todo:
            if "cluster" in cl.flagged_by:
                box = cl.box
            elif "class" in cl.flagged_by:
                box = c.comparison.box
            else:  # flagged by the pixel comparison (:mod:`convscope.methods.dataset._pixels`)
                box = c.pixel_check.box
            donors = np.flatnonzero((run_labels != c.index) & (pred != c.model_class))
            donor_p = prob_of(prob_arr, st, donors, c.model_class)
            cl.intervention = intervene(
                lm.model, src, cl.flagged, probs[cl.flagged], donors, donor_p, box, c.model_class,
                fill=cfg.intervention, confirm=cfg.confirm, image_size=image_size, device=device,
                batch_size=job.batch_size, seed=job.seed,
            )
