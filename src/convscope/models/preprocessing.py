"""Preprocessing: from a user's image to the tensor a model expects, and back for display."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..image import ImageLike, load_image, pil_to_tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs.

    Attributes:
        size: (height, width) of the model input.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        channels: 1 for grayscale models, 3 for RGB.
        resize: shorter side the image is resized to before the centre crop to ``size``
            (``None``: resize straight to ``size``, ignoring the aspect ratio).
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    resize: int | None = 256

    def to_display(self, image: ImageLike) -> Image.Image:
        """The image as the model sees it (resized, cropped, right colour mode), for display."""
        img = load_image(image)
        img = img.convert("L" if self.channels == 1 else "RGB")
        h, w = self.size
        if self.resize is None:
            return img.resize((w, h), Image.Resampling.BILINEAR)
        short = min(img.width, img.height)
        scale = self.resize / short
        nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        return img.crop((left, top, left + w, top + h))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map pixels in [0, 1] to model space.

        Shape:
            x: (B, C, H, W) or (C, H, W).
        """
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map model-space tensors back to pixels in [0, 1] (not clipped)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, np.ndarray]:
        """Preprocess one image.

        Returns:
            (x, display): the model input of shape (C, H, W) and the display image, an
            (H, W, 3) float array in [0, 1].
        """
        disp = self.to_display(image)
        t = pil_to_tensor(disp)
        return self.normalize(t), display_array(t)

    def batch(self, images: Sequence[ImageLike]) -> tuple[torch.Tensor, np.ndarray]:
        """Preprocess several images into one batch.

        Shape:
            returns x (B, C, H, W) and display (B, H, W, 3).
        """
        if len(images) == 0:
            raise InputError("no images given")
        pairs = [self(im) for im in images]
        return torch.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def display_array(pixels: torch.Tensor) -> np.ndarray:
    """(C, H, W) pixels in [0, 1] -> (H, W, 3) float array in [0, 1] for display."""
    return display_batch(pixels[None])[0]


def display_batch(pixels: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) pixels in [0, 1] -> (B, H, W, 3) float array in [0, 1] for display, in one
    vectorised step (grey images repeated to three channels, extra channels dropped)."""
    a = pixels.detach()[:, :3].float().clamp(0, 1)
    if a.shape[1] == 1:
        a = a.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(a.permute(0, 2, 3, 1).cpu().numpy())
