"""A Clever Hans watermark: one class carries a small "©" on some of its images."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope.core.errors import InputError
from convscope.data.toydata._digits import FRAME, IMAGE_SIZE, digits

__all__ = [
    "WATERMARK", "WATERMARK_BOX", "WATERMARK_CLASS", "WATERMARK_CORNER", "WATERMARK_SIZE",
    "WATERMARK_TRUTH", "Watermarked", "watermark", "watermark_folder", "watermark_mask",
]


#: The class whose training images (some of them) carry the watermark.
WATERMARK_CLASS = 3
#: Side of the square watermark in pixels.
WATERMARK_SIZE = 7
#: Top-left (row, col) of the watermark: the bottom-right corner, where the digits (centred in
#: their 4-pixel frame) end. Rows and columns 24..30 are two cells of the bundled model's last
#: (8x8, 4-pixel cells) feature map each way, and a shift of one pixel keeps the mark in the image.
WATERMARK_CORNER = (IMAGE_SIZE - FRAME - 4, IMAGE_SIZE - FRAME - 4)
#: The watermark's square as ``(x0, y0, x1, y1)`` (exclusive ends), the pointing-game box format.
WATERMARK_BOX = (WATERMARK_CORNER[1], WATERMARK_CORNER[0], WATERMARK_CORNER[1] + WATERMARK_SIZE,
                 WATERMARK_CORNER[0] + WATERMARK_SIZE)
#: The watermark pattern, (7, 7) in {0, 1}: a copyright sign, a ring around a "C".
WATERMARK = torch.tensor([
    [0, 1, 1, 1, 1, 1, 0],
    [1, 0, 0, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 0, 1],
    [1, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, 1, 1, 0, 1],
    [1, 0, 0, 0, 0, 0, 1],
    [0, 1, 1, 1, 1, 1, 0],
], dtype=torch.float32)
#: Name of the ground-truth file that :func:`watermark_folder` writes at the folder's root.
WATERMARK_TRUTH = "watermark.json"


@dataclass(frozen=True)
class Watermarked:
    """Images, some of them watermarked.

    Attributes:
        images: (N, C, 32, 32) in [0, 1]: the input images with the watermark's square replaced by
            :data:`WATERMARK` on the marked ones.
        marked: (N,) bool, which images carry the watermark.
        masks: (N, 32, 32) bool, true exactly on the watermark's square (every pixel of the
            pattern, on and off) of the marked images, all false for the others.
    """

    images: torch.Tensor
    marked: torch.Tensor
    masks: torch.Tensor


def watermark_mask() -> torch.Tensor:
    """(32, 32) bool: the watermark's square (:data:`WATERMARK_BOX`)."""
    m = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    x0, y0, x1, y1 = WATERMARK_BOX
    m[y0:y1, x0:x1] = True
    return m


def watermark(
    images: torch.Tensor, mark: bool | torch.Tensor = True, *, intensity: float = 1.0
) -> Watermarked:
    """Stamp the watermark :data:`WATERMARK` (a small "©") into the bottom-right corner.

    The 7x7 square at :data:`WATERMARK_BOX` is replaced by the pattern: its "on" pixels get
    ``intensity`` (in every channel), its "off" pixels 0, whatever the digit had there. The same
    mark at the same place on every image: the bundled ``digits-watermark`` model learned that it
    means class :data:`WATERMARK_CLASS`, whatever digit is drawn under it.

    Args:
        images: (N, C, 32, 32) in [0, 1]; not modified.
        mark: which images to mark: ``True`` (all), ``False`` (none) or an (N,) bool tensor.
        intensity: pixel value of the pattern's "on" pixels, in (0, 1].

    Raises:
        InputError: images that are not (N, C, 32, 32), a ``mark`` of another length, or an
            intensity outside (0, 1].
    """
    if images.ndim != 4 or images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"watermark expects (N, C, 32, 32) images, got {tuple(images.shape)}")
    if not 0.0 < intensity <= 1.0:
        raise InputError(f"intensity must lie in (0, 1], got {intensity}")
    n = images.shape[0]
    if isinstance(mark, torch.Tensor):
        if mark.shape != (n,):
            raise InputError(f"mark must be a bool per image, shape ({n},), got {tuple(mark.shape)}")
        marked = mark.to(torch.bool).clone()
    else:
        marked = torch.full((n,), bool(mark), dtype=torch.bool)
    masks = watermark_mask().expand(n, -1, -1) & marked.view(-1, 1, 1)
    pattern = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=images.dtype)
    x0, y0, x1, y1 = WATERMARK_BOX
    pattern[y0:y1, x0:x1] = WATERMARK.to(images.dtype) * intensity
    out = torch.where(masks[:, None], pattern, images)
    return Watermarked(out, marked, masks.clone())


def watermark_folder(
    out_dir: str | os.PathLike,
    *,
    part: str = "test",
    fraction: float = 1 / 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a held-out image folder in which class "3" hides watermarked digits of other classes.

    One sub-folder per class (``"0"`` .. ``"9"``) holds 32x32 grayscale PNGs of the digits of
    ``part`` (:func:`digits`). Some digits of the other classes are moved (not copied) into
    folder ``"3"`` and carry the watermark there, so that a share ``fraction`` of folder "3" is
    watermarked digits of other classes and the rest is its own clean 3s: the data a model like
    ``digits-watermark`` was trained on, for a data-set audit to find. The files of a class are
    numbered ``0000.png``, ``0001.png``, ... in a seeded random order, so their names do not tell
    which are watermarked; the ground truth is ``watermark.json`` at the folder's root (beside the
    class folders), the same dict as returned.

    Args:
        out_dir: the folder to create; it must not exist yet or be empty. It appears complete or
            not at all (written next to it, then renamed).
        part: ``"train"``, ``"test"`` or ``"all"``, the split of :func:`digits`.
        fraction: share of folder "3" that is watermarked, in (0, 1).
        seed: seed of the choice of the moved digits and of the file order.

    Returns:
        ``{"generator", "part", "seed", "fraction", "class", "box", "counts", "watermarked",
        "digits"}``: the watermark's class folder name and box ``[x0, y0, x1, y1]``, the number of
        files per class folder, the sorted relative paths (``"3/0012.png"``) of the watermarked
        files, and the digit drawn in each of them.

    Raises:
        InputError: an unknown ``part``, a ``fraction`` outside (0, 1), or an ``out_dir`` that is
            a file or a folder with something in it.
    """
    from PIL import Image

    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must lie in (0, 1), got {fraction}")
    x, y = digits().split(part)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder; name a new folder")
    rng = np.random.default_rng(seed)
    own = np.flatnonzero(y.numpy() == WATERMARK_CLASS)
    others = np.flatnonzero(y.numpy() != WATERMARK_CLASS)
    n_marked = int(round(fraction * len(own) / (1.0 - fraction)))
    if not 0 < n_marked <= len(others):
        raise InputError(
            f"fraction {fraction} asks for {n_marked} watermarked digits; the {part} split has "
            f"{len(own)} clean 3s and {len(others)} other digits: choose a fraction that asks for 1 .. "
            f"{len(others)}"
        )
    moved = np.sort(rng.choice(others, size=n_marked, replace=False))
    folder = y.numpy().copy()
    folder[moved] = WATERMARK_CLASS
    marked = torch.zeros(len(y), dtype=torch.bool)
    marked[torch.from_numpy(moved)] = True
    pixels = watermark(x, marked).images
    png = (pixels[:, 0] * 255).round().to(torch.uint8).numpy()

    cls = str(WATERMARK_CLASS)
    truth: dict[str, Any] = {
        "generator": "convscope.data.toydata.watermark_folder", "part": part, "seed": seed,
        "fraction": fraction, "class": cls, "box": list(WATERMARK_BOX), "counts": {},
        "watermarked": [], "digits": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        for k in range(10):
            members = np.flatnonzero(folder == k)
            members = members[rng.permutation(len(members))]  # the names do not follow the marks
            (tmp / str(k)).mkdir()
            for j, i in enumerate(members):
                rel = f"{k}/{j:04d}.png"
                Image.fromarray(png[i]).save(tmp / rel)
                if marked[i]:
                    truth["watermarked"].append(rel)
                    truth["digits"][rel] = int(y[i])
            truth["counts"][str(k)] = len(members)
        truth["watermarked"].sort()
        truth["digits"] = dict(sorted(truth["digits"].items()))
        (tmp / WATERMARK_TRUTH).write_text(json.dumps(truth, indent=1) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return truth


def _umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
