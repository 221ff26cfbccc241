"""Wolves and huskies: colour digit scenes with a planted snow band."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convscope.core.errors import InputError
from convscope.data.toydata._digits import digits

__all__ = [
    "SNOW_BAND_ROWS", "SNOW_CLASSES", "SNOW_SIZE", "SnowScenes", "snow_scenes",
]


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
