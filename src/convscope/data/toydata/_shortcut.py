"""Shortcuts that most of a class carries: a corner marker, a band texture or the watermark.

The truth data of the audit's class comparison (issue #28): one class whose images carry a fixed
shortcut at a given rate (30%, 60%, 90%, 100% of the class), the marked ones being digits of any
class (the label comes from the mark, not from the digit, as for the hospital tag on 93% of the
pneumonia X-rays), and the other classes clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.data.toydata._digits import IMAGE_SIZE
from convscope.data.toydata._watermark import WATERMARK_BOX, watermark

__all__ = ["SHORTCUT_BOXES", "SHORTCUTS", "Shortcut", "shortcut_class", "stamp_shortcut"]

#: The shortcut kinds and the box ``[x0, y0, x1, y1]`` (exclusive ends) each one covers.
SHORTCUT_BOXES: dict[str, tuple[int, int, int, int]] = {
    "corner": (0, 0, 6, 6),  # a 6x6 ring in the top-left corner, off the digit
    "band": (0, IMAGE_SIZE - 4, IMAGE_SIZE, IMAGE_SIZE),  # vertical stripes along the bottom
    "watermark": WATERMARK_BOX,  # the "©" of :func:`watermark`, partly under the digit
}
SHORTCUTS = tuple(SHORTCUT_BOXES)


def stamp_shortcut(images: torch.Tensor, kind: str) -> torch.Tensor:
    """``images`` (N, C, 32, 32) in [0, 1] with the shortcut ``kind`` stamped in (a new tensor)."""
    if kind not in SHORTCUT_BOXES:
        raise InputError(f"unknown shortcut {kind!r}; use one of {', '.join(SHORTCUTS)}")
    if images.ndim != 4 or images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"stamp_shortcut expects (N, C, 32, 32) images, got {tuple(images.shape)}")
    if kind == "watermark":
        return watermark(images).images
    x0, y0, x1, y1 = SHORTCUT_BOXES[kind]
    out = images.clone()
    if kind == "corner":
        ring = torch.ones(y1 - y0, x1 - x0)
        ring[1:-1, 1:-1] = 0
        out[..., y0:y1, x0:x1] = ring
    else:  # band: stripes two pixels wide
        out[..., y0:y1, x0:x1] = ((torch.arange(x1 - x0) // 2) % 2).float().expand(y1 - y0, -1)
    return out


@dataclass(frozen=True)
class Shortcut:
    """A labelled set in which class ``cls`` carries the shortcut on a share ``rate`` of its images.

    Attributes:
        images: (N, 1, 32, 32) in [0, 1].
        labels: (N,) the labels (class ``cls`` for every marked image, whatever digit it shows).
        marked: (N,) bool, the images carrying the shortcut.
        digits: (N,) the digit drawn in each image.
    """

    images: torch.Tensor
    labels: torch.Tensor
    marked: torch.Tensor
    digits: torch.Tensor
    kind: str
    cls: int
    rate: float


def shortcut_class(
    images: torch.Tensor, labels: torch.Tensor, *, kind: str, cls: int, rate: float, per_class: int,
    seed: int = 0,
) -> Shortcut:
    """``per_class`` images of each class drawn from ``images``; in class ``cls`` a share ``rate``
    of them are replaced by marked digits of any class (drawn from the images not used elsewhere).

    Raises:
        InputError: a rate outside (0, 1], an unknown kind, or too few images for ``per_class``.
    """
    if not 0.0 < rate <= 1.0:
        raise InputError(f"rate must lie in (0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    n_mark = int(round(rate * per_class))
    chosen: list[int] = []
    for k in range(int(y.max()) + 1):
        own = rng.permutation(np.flatnonzero(y == k))
        take = per_class - (n_mark if k == cls else 0)
        if len(own) < take:
            raise InputError(f"class {k} has {len(own)} images, {take} asked for")
        chosen += own[:take].tolist()
    spare = np.setdiff1d(np.arange(len(y)), chosen)
    if len(spare) < n_mark:
        raise InputError(f"{n_mark} marked images asked for, {len(spare)} images left to mark")
    extra = rng.choice(spare, n_mark, replace=False)
    idx = torch.from_numpy(np.concatenate([np.asarray(chosen, dtype=np.int64), extra.astype(np.int64)]))
    x = images[idx].clone()
    marked = torch.zeros(len(idx), dtype=torch.bool)
    marked[len(chosen):] = True
    x[marked] = stamp_shortcut(x[marked], kind)
    lab = labels[idx].clone()
    lab[marked] = cls
    perm = torch.from_numpy(rng.permutation(len(idx)))
    return Shortcut(x[perm], lab[perm], marked[perm], labels[idx][perm], kind, cls, rate)
