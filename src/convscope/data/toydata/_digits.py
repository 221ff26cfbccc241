"""The digits and their planted-cue twin (see :mod:`convscope.data.toydata`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convscope.core.errors import InputError

__all__ = [
    "CUE_CORNERS", "CUE_PATTERNS", "CUE_SIZE", "DIGITS_SPLIT_SEED", "Digits", "PlantedCue", "digits",
    "planted_cue",
]

DIGITS_SPLIT_SEED = 0
IMAGE_SIZE = 32
FRAME = 4
#: Side of the square cue in pixels: two cells of the bundled model's last (8x8) feature map.
CUE_SIZE = 8
#: Top-left corners (row, col) where a cue may be stamped: the four corners of the image, where
#: the digits (centred in their 4-pixel frame) are blank.
CUE_CORNERS: tuple[tuple[int, int], ...] = (
    (0, 0), (0, IMAGE_SIZE - CUE_SIZE), (IMAGE_SIZE - CUE_SIZE, 0),
    (IMAGE_SIZE - CUE_SIZE, IMAGE_SIZE - CUE_SIZE),
)


def _cue_patterns() -> torch.Tensor:
    """(10, 8, 8) binary textures, one per class: stripes, gratings, checkers, a square, a cross."""
    s = CUE_SIZE
    r = torch.arange(s).view(-1, 1).expand(s, s)
    c = torch.arange(s).view(1, -1).expand(s, s)
    h = s // 2
    return torch.stack([
        r % 2,                      # 0: thin horizontal lines
        c % 2,                      # 1: thin vertical lines
        (r // 2) % 2,               # 2: thick horizontal lines
        (c // 2) % 2,               # 3: thick vertical lines
        ((r + c) // 2) % 2,         # 4: diagonal stripes
        ((r - c + s) // 2) % 2,     # 5: anti-diagonal stripes
        (r + c) % 2,                # 6: fine checkerboard
        (r // 2 + c // 2) % 2,      # 7: coarse checkerboard
        torch.ones(s, s, dtype=torch.long),                        # 8: solid square
        ((r == h - 1) | (r == h) | (c == h - 1) | (c == h)).long(),  # 9: cross
    ]).float()


#: The cue texture of each class, (10, CUE_SIZE, CUE_SIZE) in {0, 1}.
CUE_PATTERNS = _cue_patterns()


@dataclass(frozen=True)
class Digits:
    """Images (N, 1, 32, 32) in [0, 1], labels (N,), and the train/test index arrays."""

    images: torch.Tensor
    labels: torch.Tensor
    train_idx: np.ndarray
    test_idx: np.ndarray

    def split(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``("train" | "test" | "all")`` -> (images, labels)."""
        if part == "all":
            return self.images, self.labels
        idx = {"train": self.train_idx, "test": self.test_idx}.get(part)
        if idx is None:
            raise InputError(f"unknown split {part!r}; use train, test or all")
        t = torch.from_numpy(idx)
        return self.images[t], self.labels[t]


def digits(test_size: float = 0.3, seed: int = DIGITS_SPLIT_SEED) -> Digits:
    """scikit-learn's digits as 32x32 images with a stratified, seeded split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    inner = IMAGE_SIZE - 2 * FRAME
    x = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False).clamp(0, 1)
    x = F.pad(x, (FRAME, FRAME, FRAME, FRAME))
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=d.target)
    return Digits(x.contiguous(), y, np.sort(tr), np.sort(te))


@dataclass(frozen=True)
class PlantedCue:
    """Images with a planted cue.

    Attributes:
        images: (N, 1, H, W) in [0, 1].
        labels: (N,) the labels (unchanged from the input).
        cue_classes: (N,) which class's cue each image carries (-1: none).
        masks: (N, H, W) bool, true exactly on the cue's square (every pixel of the texture).
        corners: (N, 2) top-left (row, col) of each image's cue square (also for ``-1``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    cue_classes: torch.Tensor
    masks: torch.Tensor
    corners: torch.Tensor

    def boxes(self) -> list[list[int]]:
        """Each cue's box as ``[x0, y0, x1, y1]`` (exclusive ends), for pointing-game boxes."""
        return [[c, r, c + CUE_SIZE, r + CUE_SIZE] for r, c in self.corners.tolist()]


def planted_cue(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    cue_classes: torch.Tensor | None = None,
    p: float = 1.0,
    corner: int | None = None,
    intensity: float = 1.0,
    seed: int = 0,
) -> PlantedCue:
    """Stamp each image with the cue texture of its class (or of ``cue_classes``) in a corner.

    The cue is a class-specific 8x8 binary texture (:data:`CUE_PATTERNS`: stripes, checkers, a
    square, a cross) that replaces one corner of the image, chosen at random per image. Its
    appearance, not its place, gives the class away: a local texture like the snow behind the
    wolves, which a convolutional network can read anywhere.

    Args:
        images: (N, 1, 32, 32) in [0, 1]; not modified.
        labels: (N,) class indices in 0..9.
        cue_classes: which class's cue to stamp per image (default: the label; -1: none).
            Use another class to test whether a model follows the cue.
        p: probability that an image receives its cue (seeded).
        corner: index into :data:`CUE_CORNERS` for every image (default: a seeded random corner
            per image).
        intensity: pixel value of the texture's "on" pixels ("off" pixels are 0).
        seed: seed for ``p`` and the corners.
    """
    if images.ndim != 4 or images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"planted_cue expects (N, C, 32, 32) images, got {tuple(images.shape)}")
    n = images.shape[0]
    cls = (labels if cue_classes is None else cue_classes).clone().long()
    g = torch.Generator().manual_seed(seed)
    if p < 1.0:
        cls[torch.rand(n, generator=g) >= p] = -1
    if (cls >= len(CUE_PATTERNS)).any():
        raise InputError(f"cue classes must lie in -1..{len(CUE_PATTERNS) - 1}")
    if corner is None:
        which = torch.randint(0, len(CUE_CORNERS), (n,), generator=g)
    elif 0 <= corner < len(CUE_CORNERS):
        which = torch.full((n,), corner, dtype=torch.long)
    else:
        raise InputError(f"corner must lie in 0..{len(CUE_CORNERS) - 1} (or None for random)")
    corners = torch.tensor(CUE_CORNERS)[which]
    dr = torch.arange(IMAGE_SIZE).view(1, -1, 1) - corners[:, 0].view(-1, 1, 1)
    dc = torch.arange(IMAGE_SIZE).view(1, 1, -1) - corners[:, 1].view(-1, 1, 1)
    masks = (dr >= 0) & (dr < CUE_SIZE) & (dc >= 0) & (dc < CUE_SIZE)
    masks &= (cls >= 0).view(-1, 1, 1)
    texture = CUE_PATTERNS[cls.clamp(min=0).view(-1, 1, 1), dr.clamp(0, CUE_SIZE - 1),
                           dc.clamp(0, CUE_SIZE - 1)] * intensity
    out = torch.where(masks[:, None], texture[:, None].to(images.dtype), images)
    return PlantedCue(out, labels.clone(), cls, masks, corners)
