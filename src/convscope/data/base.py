"""The data-source protocol: a :class:`DataSource` is a map-style torch ``Dataset`` of model-space
image tensors with labels and display images; :func:`fit_pixels` puts pixels in [0, 1] into a
model's input space. The sources themselves (digits, folders, tensors, torchvision data sets) are in
:mod:`convscope.data.sources`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from convscope.core.errors import InputError
from convscope.models.preprocessing import Preprocessing, display_array

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def fit_pixels(t: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """(C, H, W) pixels in [0, 1] -> the model's channel count and size (bilinear resize)."""
    if t.shape[0] != pre.channels:
        if t.shape[0] == 1:
            t = t.expand(pre.channels, -1, -1)
        elif pre.channels == 1:
            t = t[:3].mean(0, keepdim=True)
        else:
            raise InputError(f"cannot feed {t.shape[0]}-channel images to a {pre.channels}-channel model")
    if tuple(t.shape[-2:]) != tuple(pre.size):
        t = F.interpolate(t[None], size=tuple(pre.size), mode="bilinear", align_corners=False)[0]
    return t.contiguous()


class DataSource(Dataset):
    """Base class: ``(x, label, index)`` items in model space plus display pixels.

    Attributes:
        preprocessing: how pixels become model inputs.
        class_names: names of the labels (may be empty).
    """

    preprocessing: Preprocessing
    class_names: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(getattr(self, 'class_names', ()))} classes)"

    def pixel_tensor(self, i: int) -> torch.Tensor:
        """(C, H, W) pixels in [0, 1] of item ``i`` at the model's input size."""
        raise NotImplementedError

    def label(self, i: int) -> int:
        return -1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for a source of {len(self)}")
        return self.preprocessing.normalize(self.pixel_tensor(i)), self.label(i), i

    def pixels(self, i: int) -> np.ndarray:
        """Display image (H, W, 3) in [0, 1] of item ``i``, as the model sees it."""
        return display_array(self.pixel_tensor(int(i)))

    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(len(self))], dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def with_preprocessing(self, pre: Preprocessing) -> DataSource:
        """The same items for a model with preprocessing ``pre``."""
        import copy

        other = copy.copy(self)
        other.preprocessing = pre
        return other
