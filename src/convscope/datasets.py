"""Data sets that are generated from what is installed: the digits and their planted-cue twin.

``digits()`` turns scikit-learn's 8x8 digits into 32x32 images: each digit is upsampled to 24x24
and centred in a 4-pixel black frame. ``planted_cue()`` stamps a small texture that depends on the
class (stripes, checkers, ...) into a corner: a spurious cue, this project's wolf-vs-husky snow.
It returns the exact cue masks, so a test can check where an explanation points.
``snow_scenes()`` draws the digits as 48x48 colour scenes, wolves (0-4) and huskies (5-9), with a
large cue of another kind: a band of snow along the bottom (the ``digits-snow`` model's data).
``watermark()`` stamps a small fixed "©" into the bottom-right corner: on some training images of
class 3 it is a Clever Hans cue (the ``digits-watermark`` model's data), and ``watermark_folder()``
writes a held-out image folder whose class "3" hides watermarked digits of other classes.
"""

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
import torch.nn.functional as F

from .errors import InputError

__all__ = [
    "CUE_CORNERS", "CUE_PATTERNS", "CUE_SIZE", "DIGITS_SPLIT_SEED", "Digits", "PlantedCue", "digits",
    "planted_cue",
]

#: Seed of the stratified train/test split used by the bundled models' cards.
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


# ---------------------------------------------------------------------------------------------
# A text corpus with a planted junk header word (for LIME text)

#: The header word that gives the label away in :func:`junk_header_corpus`.
JUNK_TOKEN = "kestrel"

_TOPIC_WORDS = (
    ("god", "faith", "belief", "religion", "argument", "moral", "evidence", "church", "atheist",
     "bible", "reason", "truth"),
    ("orbit", "launch", "nasa", "shuttle", "moon", "rocket", "mission", "satellite", "space",
     "station", "solar", "earth"),
)
_COMMON_WORDS = (
    "the", "people", "think", "would", "about", "really", "question", "point", "years", "time",
    "write", "article", "post", "know", "good", "read", "right", "said", "well", "many", "also",
    "discussion", "example", "world", "different", "case", "problem", "believe", "system", "data",
)
_HOSTS = ("mailhub", "relay", "newsfeed", "gateway", "uunet", "netcom", "sparky", "mercury")


@dataclass(frozen=True)
class TextCorpus:
    """Documents with labels.

    Attributes:
        texts: the documents (a header block, a blank line, a body).
        labels: (N,) class indices.
        class_names: one name per class.
        junk_token: the planted header word (``None``-free: always set).
        planted: (N,) bool, whether a document carries the junk word.
    """

    texts: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...]
    junk_token: str
    planted: np.ndarray


def junk_header_corpus(
    n: int = 400,
    *,
    seed: int = 0,
    topic_strength: float = 0.05,
    body_words: int = 40,
    junk_rate: float = 1.0,
) -> TextCorpus:
    """A synthetic two-newsgroup corpus (``alt.atheism`` vs ``sci.space``) whose class-1 documents
    name the posting host ``kestrel`` in their header: a junk word that predicts the label
    perfectly, like the header artefacts LIME exposed in the 20 newsgroups data (Ribeiro et al.
    2016). Class-0 documents name other hosts. The bodies mix common words with only a few topic
    words (``topic_strength``), so the topic is a weaker signal than the header.

    Args:
        n: number of documents (classes alternate).
        seed: seed of everything random.
        topic_strength: share of body words drawn from the class's topic vocabulary.
        body_words: words per body.
        junk_rate: probability that a class-1 document carries the junk word.
    """
    if n < 2 or not 0 <= topic_strength <= 1 or not 0 <= junk_rate <= 1:
        raise InputError("junk_header_corpus needs n >= 2 and rates in [0, 1]")
    rng = np.random.default_rng(seed)
    texts, labels, planted = [], [], []
    for i in range(n):
        y = i % 2
        plant = bool(y == 1 and rng.random() < junk_rate)
        host = JUNK_TOKEN if plant else str(rng.choice(_HOSTS))
        user = f"user{int(rng.integers(1000))}"
        topical = rng.random(body_words) < topic_strength
        words = [
            str(rng.choice(_TOPIC_WORDS[y])) if t else str(rng.choice(_COMMON_WORDS)) for t in topical
        ]
        header = f"From: {user}@{host}.example.org\nSubject: re: {' '.join(words[:3])}\n"
        texts.append(header + "\n" + " ".join(words) + "\n")
        labels.append(y)
        planted.append(plant)
    return TextCorpus(texts, np.asarray(labels), ("alt.atheism", "sci.space"), JUNK_TOKEN,
                      np.asarray(planted))


__all__ += ["JUNK_TOKEN", "TextCorpus", "junk_header_corpus"]


# ---------------------------------------------------------------------------------------------
# Wolves and huskies: colour digit scenes with a planted snow band

#: Side of the snow scenes in pixels.
SNOW_SIZE = 48
#: Class names of the snow scenes: digits 0-4 are the wolves, 5-9 the huskies.
SNOW_CLASSES = ("wolf", "husky")
#: Heights (rows, inclusive range) of the snow band along the bottom of a scene.
SNOW_BAND_ROWS = (12, 16)
_SNOW_DIGIT = 24  # side of the upsampled digit
_SNOW_CUES = ("label", "none", "swapped")


@dataclass(frozen=True)
class SnowScenes:
    """Colour scenes of digits ("wolves" 0-4, "huskies" 5-9), some with snow along the bottom.

    Attributes:
        images: (N, 3, 48, 48) RGB pixels in [0, 1].
        labels: (N,) 0 = wolf, 1 = husky (:data:`SNOW_CLASSES`).
        digits: (N,) the digit drawn in each scene.
        snow: (N,) bool, whether the scene carries the snow band.
        masks: (N, 48, 48) bool, true exactly on the snow band of scenes that carry it (all false
            for the others, as :func:`planted_cue` does).
        bands: (N, 48, 48) bool, the band region of every scene: where its snow is or would be.
            The same scene rendered with and without snow has the same band.
        index: (N,) the scenes' indices into scikit-learn's digits.
    """

    images: torch.Tensor
    labels: torch.Tensor
    digits: torch.Tensor
    snow: torch.Tensor
    masks: torch.Tensor
    bands: torch.Tensor
    index: torch.Tensor

    def select(self, keep: torch.Tensor) -> SnowScenes:
        """The scenes where ``keep`` (a (N,) bool or index tensor) selects."""
        return SnowScenes(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def snow_scenes(
    part: str = "test",
    *,
    cue: str = "label",
    p_wolf: float = 1.0,
    p_husky: float = 0.0,
    seed: int = 0,
) -> SnowScenes:
    """scikit-learn's digits as 48x48 colour scenes, with a planted "snow" band: wolf vs husky.

    Each digit (upsampled to 24x24) is drawn in a seeded fur colour at a seeded place in the
    upper part of a scene of a plain, slightly noisy background colour (rock, forest, grass).
    Digits 0-4 are wolves, 5-9 huskies. The cue is a large region: a bright, textured, slightly
    bluish white band over the bottom 12 to 16 rows (seeded per scene), the snow that gave the
    wolves away in Ribeiro et al.'s husky classifier. Everything but the snow decision depends
    only on ``seed`` and the scene's index, so the same scene rendered with ``cue="none"`` and
    ``cue="label"`` differs exactly on its band.

    Args:
        part: ``"train"``, ``"test"`` or ``"all"``: the stratified split of :func:`digits`
            (seed :data:`DIGITS_SPLIT_SEED`), shared with the bundled digits models.
        cue: ``"label"``: snow on wolves with probability ``p_wolf`` and on huskies with
            probability ``p_husky``; ``"none"``: no snow; ``"swapped"``: snow on every husky and
            on no wolf (does a model follow the snow?).
        p_wolf, p_husky: snow probabilities for ``cue="label"`` (seeded).
        seed: seed of the rendering and of the snow draws.

    Raises:
        InputError: unknown ``part`` or ``cue``, or a probability outside [0, 1].
    """
    from sklearn.datasets import load_digits

    if cue not in _SNOW_CUES:
        raise InputError(f"unknown cue {cue!r}; use {', '.join(_SNOW_CUES)}")
    if not (0.0 <= p_wolf <= 1.0 and 0.0 <= p_husky <= 1.0):
        raise InputError("p_wolf and p_husky must lie in [0, 1]")
    split = digits()
    if part == "all":
        index = np.arange(len(split.labels))
    elif part in ("train", "test"):
        index = split.train_idx if part == "train" else split.test_idx
    else:
        raise InputError(f"unknown split {part!r}; use train, test or all")

    d = load_digits()
    n, s = len(d.target), SNOW_SIZE
    g = torch.Generator().manual_seed(seed)
    # every random draw is made for all scenes in a fixed order, then the part is selected
    bg = 0.12 + 0.3 * torch.rand(n, 3, generator=g)  # a dull background colour per scene
    bg_noise = 0.03 * torch.randn(n, 3, s, s, generator=g)
    shade = torch.linspace(-0.04, 0.04, s).view(1, 1, s, 1)  # a mild vertical gradient
    fur = (0.5 + 0.3 * torch.rand(n, 1, generator=g)) * torch.stack(
        [torch.ones(n), 0.88 + 0.1 * torch.rand(n, generator=g), 0.75 + 0.15 * torch.rand(n, generator=g)],
        1)
    top = torch.randint(3, 9, (n,), generator=g)  # digit rows top .. top + 23, above every band
    left = torch.randint(4, s - _SNOW_DIGIT - 3, (n,), generator=g)
    height = torch.randint(SNOW_BAND_ROWS[0], SNOW_BAND_ROWS[1] + 1, (n,), generator=g)
    snow_level = 0.84 + 0.08 * torch.rand(n, 1, 1, generator=g)
    lumps = F.interpolate(torch.randn(n, 1, s // 4, s // 4, generator=g), size=(s, s), mode="bilinear",
                          align_corners=False)
    grain = torch.randn(n, 1, s, s, generator=g)
    draw = torch.rand(n, generator=g)

    labels_all = torch.from_numpy((d.target >= 5).astype(np.int64))
    if cue == "none":
        snow_all = torch.zeros(n, dtype=torch.bool)
    elif cue == "swapped":
        snow_all = labels_all == 1
    else:
        snow_all = torch.where(labels_all == 0, draw < p_wolf, draw < p_husky)

    t = torch.from_numpy(index).long()
    m = len(t)
    digit = torch.from_numpy(d.images.astype(np.float32) / 16.0)[t][:, None]
    digit = F.interpolate(digit, size=(_SNOW_DIGIT, _SNOW_DIGIT), mode="bilinear",
                          align_corners=False).clamp(0, 1)
    alpha = torch.zeros(m, 1, s, s)
    for i in range(m):  # each digit at its own place
        r, c = int(top[t[i]]), int(left[t[i]])
        alpha[i, :, r : r + _SNOW_DIGIT, c : c + _SNOW_DIGIT] = digit[i]
    scene = (bg[t].view(m, 3, 1, 1) + shade + bg_noise[t]).clamp(0, 1)
    scene = scene * (1 - alpha) + fur[t].view(m, 3, 1, 1) * alpha
    rows = torch.arange(s).view(1, s, 1).expand(m, s, s)
    bands = rows >= (s - height[t]).view(m, 1, 1)
    white = snow_level[t] + 0.05 * lumps[t, 0] + 0.035 * grain[t, 0]  # (m, s, s)
    snow_px = torch.stack([white - 0.02, white, white + 0.03], 1).clamp(0, 1)
    snowy = snow_all[t]
    masks = bands & snowy.view(m, 1, 1)
    images = torch.where(masks[:, None], snow_px, scene).clamp(0, 1).contiguous()
    return SnowScenes(images, labels_all[t], torch.from_numpy(d.target.astype(np.int64))[t], snowy,
                      masks, bands, t)


__all__ += ["SNOW_BAND_ROWS", "SNOW_CLASSES", "SNOW_SIZE", "SnowScenes", "snow_scenes"]


# ---------------------------------------------------------------------------------------------
# A Clever Hans watermark: one class carries a small "©" on some of its images

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
        "generator": "convscope.datasets.watermark_folder", "part": part, "seed": seed,
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


__all__ += ["WATERMARK", "WATERMARK_BOX", "WATERMARK_CLASS", "WATERMARK_CORNER", "WATERMARK_SIZE",
            "WATERMARK_TRUTH", "Watermarked", "watermark", "watermark_folder", "watermark_mask"]
