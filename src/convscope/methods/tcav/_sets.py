"""Image sets of a concept test: the concept's examples, the random sets, the class's images.

Every set is a :class:`~convscope.methods.dataset.DataSource` (so it streams through the dataset engine in
batches) with a content digest (what the shared-work cache keys on). A concept comes from

* a folder of images, or a ``"digits"``-style name (anything :func:`~convscope.methods.dataset.as_source`
  reads);
* a tensor (N, C, H, W) or a list of (C, H, W) tensors, read by the one input rule (what the model
  takes, or pixels in [0, 1] with ``space="pixels"``);
* regions of images: a list of ``(image, mask)`` pairs, or :func:`regions` (the same pairs by
  default). One rule for both: each region becomes one example, the mask's bounding box cut out,
  the pixels outside the mask inside that box set to mid-grey (0.5, the ACE convention), resized
  to the model's input. ``regions(..., keep_place=True)`` gives pairs whose mask is the whole
  image (the region kept where it is, grey around it), which the same rule then leaves as they are.

Random sets are drawn, seeded, from a pool of unrelated images; with no pool given, the pool is
:class:`CropSource`: random square crops of the class's own images (documented and recorded as an
assumption, since a folder of unrelated images is the better null).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convscope.core.errors import InputError
from convscope.core.image import load_image, pil_to_tensor
from convscope.data.base import fit_pixels
from convscope.data.sources import Subset
from convscope.methods.dataset import DataSource, as_source
from convscope.models.preprocessing import Preprocessing

__all__ = ["CropSource", "ImageSet", "PooledSource", "RegionSource", "concept_source", "digest",
           "draw_random_sets", "regions"]

#: Grey level (pixel space) of a region's surroundings inside its bounding box.
REGION_FILL = 0.5


@dataclass(frozen=True)
class ImageSet:
    """One set of images of a concept test.

    Attributes:
        name: how results name it (``"snow"``, ``"random 3"``, ``"class wolf"``).
        source: the images, streamed in batches.
        key: a digest of the set's content (and how it was drawn).
        about: one line saying where the images come from.
    """

    name: str
    source: DataSource
    key: str
    about: str

    def __len__(self) -> int:
        return len(self.source)


def digest(src: DataSource, *extra: Any) -> str:
    """A SHA-256 over what ``src.describe()`` says (a folder's file names and sizes, a tensor's
    bytes, a subset's indices) and ``extra``."""
    blob = json.dumps([src.describe(), [str(e) for e in extra]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _as_pixels(img: Any) -> torch.Tensor:
    """(C, H, W) pixels in [0, 1] of an image path, PIL image, array or pixel tensor."""
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise InputError(f"a region's image must be (C, H, W) or (H, W), got {tuple(img.shape)}")
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise InputError("a region's image tensor must hold pixels in [0, 1]")
        return t
    return pil_to_tensor(load_image(img))


def _as_mask(mask: Any, shape: tuple[int, int]) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        m = mask.detach().cpu()
    elif isinstance(mask, np.ndarray):
        m = torch.from_numpy(mask)
    else:
        m = pil_to_tensor(load_image(mask)).mean(0)
    m = m.squeeze()
    if m.ndim != 2 or tuple(m.shape) != shape:
        raise InputError(f"a mask must be (H, W) = {shape} like its image, got {tuple(m.shape)}")
    return m.float() > 0.5


class RegionSource(DataSource):
    """Regions of images as concept examples: item ``i`` is the bounding box of ``masks[i]`` cut
    from ``images[i]``, pixels outside the mask set to :data:`REGION_FILL`, resized to the model's
    input. Images: paths, PIL images or (C, H, W) pixel tensors in [0, 1]; masks: (H, W) bool or
    0/1 tensors or arrays, or mask image files (white = region)."""

    def __init__(self, images: Sequence[Any], masks: Sequence[Any], pre: Preprocessing) -> None:
        if len(images) != len(masks):
            raise InputError(f"{len(images)} images but {len(masks)} masks; give one mask per image")
        self.preprocessing = pre
        self.class_names = []
        self._crops: list[torch.Tensor] = []
        for k, (img, mask) in enumerate(zip(images, masks, strict=True)):
            px = _as_pixels(img)
            m = _as_mask(mask, tuple(px.shape[-2:]))
            if not m.any():
                raise InputError(f"mask {k} is empty; a region needs at least one pixel")
            rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            box = torch.where(m[None, r0:r1, c0:c1], px[:, r0:r1, c0:c1], torch.tensor(REGION_FILL))
            self._crops.append(box.contiguous())

    def __len__(self) -> int:
        return len(self._crops)

    def pixel_tensor(self, i: int) -> torch.Tensor:
        return fit_pixels(self._crops[i], self.preprocessing)

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for c in self._crops:
            h.update(str(tuple(c.shape)).encode())
            h.update(c.numpy().tobytes())
        return {"kind": "regions", "size": len(self), "sha256": h.hexdigest()}


def regions(images: Sequence[Any], masks: Sequence[Any], *,
            keep_place: bool = False) -> list[tuple[Any, Any]]:
    """Pair images with their masks for ``concept_test(model, regions(images, masks), ...)``.

    Args:
        images: paths, PIL images or (C, H, W) pixel tensors in [0, 1].
        masks: one (H, W) mask per image (bool tensor or array, or a mask image, white = region).
        keep_place: ``False`` (default): the pairs as given, each cut out to its mask's bounding
            box and resized to the model's input (ACE's convention; what a raw list of pairs
            gives too). ``True``: keep each region where and how large it is in its image (the
            whole image, the pixels outside the mask set to :data:`REGION_FILL`). Its vector is
            closer to the edit's change of activation (cosine 0.99 against 0.63 at ``digits-snow``
            ``conv4``, ``benchmarks/concepts_keep_place.py``), but the grey fill, most of each
            image, is part of the concept while the random sets have none: the same band masks on
            snow-free scenes, kept in place, come out "significant" on ``digits-snow`` (cut out they
            do not). Not the default until the random sets get the same fill (docs/concepts.md).
    """
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks; give one mask per image")
    if not keep_place:
        return list(zip(images, masks, strict=True))
    out = []
    for k, (img, mask) in enumerate(zip(images, masks, strict=True)):
        px = _as_pixels(img)
        m = _as_mask(mask, tuple(px.shape[-2:]))
        if not m.any():
            raise InputError(f"mask {k} is empty; a region needs at least one pixel")
        out.append((torch.where(m[None], px, torch.tensor(REGION_FILL)), torch.ones_like(m)))
    return out


class CropSource(DataSource):
    """``n`` random square crops of another source's images, each resized to the model's input:
    the default pool of random images. Crop ``i`` takes image ``j`` (seeded), a side of 30% to 70%
    of the image's shorter side and a place, all drawn from a generator seeded with
    ``(seed, i)``."""

    def __init__(self, base: DataSource, n: int, seed: int = 0) -> None:
        self.base = base
        self.n = int(n)
        self.seed = int(seed)
        self.preprocessing = base.preprocessing
        self.class_names = []

    def __len__(self) -> int:
        return self.n

    def pixel_tensor(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        j = int(torch.randint(len(self.base), (1,), generator=g))
        px = self.base.pixel_tensor(j)
        h, w = px.shape[-2:]
        side = max(2, int(min(h, w) * (0.3 + 0.4 * float(torch.rand(1, generator=g)))))
        r = int(torch.randint(h - side + 1, (1,), generator=g))
        c = int(torch.randint(w - side + 1, (1,), generator=g))
        crop = px[:, r:r + side, c:c + side]
        return F.interpolate(crop[None], size=tuple(self.preprocessing.size), mode="bilinear",
                             align_corners=False)[0].clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        return {"kind": "crops", "size": self.n, "seed": self.seed, "of": self.base.describe()}


class PooledSource(DataSource):
    """Several sources read as one, in order (a random pool given as several folders)."""

    def __init__(self, parts: Sequence[DataSource]) -> None:
        self.parts = list(parts)
        self.preprocessing = self.parts[0].preprocessing
        self.class_names = []
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _where(self, i: int) -> tuple[DataSource, int]:
        k = int(np.searchsorted(self._starts, int(i), side="right")) - 1
        return self.parts[k], int(i) - int(self._starts[k])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        part, j = self._where(i)
        return part[j][0], -1, int(i)

    def pixel_tensor(self, i: int) -> torch.Tensor:
        part, j = self._where(i)
        return part.pixel_tensor(j)

    def describe(self) -> dict[str, Any]:
        return {"kind": "pooled", "size": len(self), "parts": [p.describe() for p in self.parts]}


def _stackable(items: Sequence[Any]) -> bool:
    return len(items) > 0 and all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in items)


def concept_source(data: Any, pre: Preprocessing, *, space: str = "model",
                   what: str = "concept") -> DataSource:
    """The images of a concept (or of a random pool): see the module docstring for the forms.

    Raises:
        InputError: an unknown form, tensors of different shapes, or a missing folder.
    """
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, tuple) and len(p) == 2 for p in data):
        images, masks = zip(*data, strict=True)
        return RegionSource(images, masks, pre)
    if isinstance(data, (list, tuple)) and _stackable(data):
        shapes = {tuple(t.shape) for t in data}
        if len(shapes) > 1:
            raise InputError(f"the {what} tensors differ in shape ({sorted(shapes)[:3]}); give one size")
        return as_source(torch.stack([t.detach().float().cpu() for t in data]), pre, space=space)
    if isinstance(data, (list, tuple)):
        raise InputError(f"a {what} list must hold (C, H, W) tensors or (image, mask) pairs")
    return as_source(data, pre, space=space)


def same_folder(a: Any, b: Any) -> bool:
    """Whether two set specs name the same folder."""
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return False
    pa, pb = Path(a), Path(b)
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def draw_random_sets(pool: DataSource, n_sets: int, size: int, seed: int, about: str) -> list[ImageSet]:
    """``n_sets`` sets of ``size`` images each drawn without replacement from ``pool`` (sets drawn
    independently of each other, so two may share images), seeded by ``seed``.

    Raises:
        InputError: the pool holds fewer than ``size`` images.
    """
    if len(pool) < size:
        raise InputError(f"the random pool holds {len(pool)} images, fewer than a set of {size}; "
                         "give more unrelated images or a smaller random_size")
    g = np.random.default_rng(seed)
    base = digest(pool)
    out = []
    for k in range(n_sets):
        idx = np.sort(g.choice(len(pool), size=size, replace=False))
        sub = Subset(pool, idx.tolist())
        key = hashlib.sha256(base.encode() + idx.astype(np.int64).tobytes()).hexdigest()
        out.append(ImageSet(f"random {k}", sub, key, about))
    return out
