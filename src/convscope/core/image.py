"""Reading images from paths, PIL images, arrays and tensors.

Everything comes out as an RGB (or L) PIL image or a float tensor in [0, 1], with EXIF orientation
applied, alpha composited on white, 16-bit and float data rescaled, and a clear
:class:`~convscope.core.errors.ImageLoadError` for non-images, truncated files and decompression bombs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from convscope.core.errors import ImageLoadError

__all__ = ["MAX_PIXELS", "ImageLike", "load_image", "pil_to_tensor", "to_pil"]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

#: Largest image accepted, in pixels (about 8k x 8k). Bigger files are refused as possible
#: decompression bombs; pass ``max_pixels=`` to raise the limit deliberately.
MAX_PIXELS = 64_000_000


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"cannot read an array of shape {tuple(arr.shape)} as an image; expected HxW, HxWx3, "
            "HxWx4 or CxHxW"
        )
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageLoadError("the image array holds NaN or infinite values; clean it first")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageLoadError(
                f"a float image must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                "rescale it or pass uint8 data"
            )
        a = (a * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ImageLoadError(f"integer image values must lie in [0, 255], got dtype {a.dtype}")
        a = a.astype(np.uint8)
    return Image.fromarray(a)


def _normalize_mode(img: Image.Image) -> Image.Image:
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        hi = max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def load_image(source: ImageLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read ``source`` as an RGB or grayscale PIL image.

    Args:
        source: a path, a PIL image, a numpy array (HxW, HxWxC or CxHxW; uint8, uint16, bool or
            float in [0, 1]) or a tensor of the same layouts.
        max_pixels: refuse larger images (decompression-bomb guard).

    Returns:
        A PIL image in mode ``"RGB"`` or ``"L"``, upright according to its EXIF orientation.

    Raises:
        ImageLoadError: the source is missing, not an image, truncated or too large.
    """
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ImageLoadError(f"expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        return _normalize_mode(_array_to_pil(t.float().numpy() if t.is_floating_point() else t.numpy()))
    elif isinstance(source, np.ndarray):
        return _normalize_mode(_array_to_pil(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"image file not found: {path}")
        if path.is_dir():
            raise ImageLoadError(f"{path} is a folder; pass an image file")
        img = _open(path, max_pixels)
        return img
    else:
        raise ImageLoadError(
            f"cannot read a {type(source).__name__} as an image; pass a path, PIL image, "
            "numpy array or tensor"
        )
    if img.width * img.height > max_pixels:
        raise ImageLoadError(
            f"image has {img.width * img.height} pixels, more than the limit of {max_pixels}; "
            "resize it or raise max_pixels"
        )
    return _normalize_mode(ImageOps.exif_transpose(img) or img)


def _open(path: Path, max_pixels: int) -> Image.Image:
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > max_pixels:
                    raise ImageLoadError(
                        f"{path} has {opened.width}x{opened.height} pixels, over the limit of "
                        f"{max_pixels}; it may be a decompression bomb (raise max_pixels if not)"
                    )
                opened.load()
                img = ImageOps.exif_transpose(opened) or opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"{path} is too large to decode safely (possible decompression bomb): {exc}"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path} could not be decoded (truncated or corrupt?): {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return _normalize_mode(img)


def to_pil(source: ImageLike) -> Image.Image:
    """Alias of :func:`load_image` for readability at call sites."""
    return load_image(source)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Convert a PIL image to a float tensor in [0, 1].

    Shape:
        output: (C, H, W) with C = 1 for mode L and 3 for RGB.
    """
    a = np.asarray(img, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[None]
    else:
        a = np.ascontiguousarray(a.transpose(2, 0, 1))
    return torch.from_numpy(a)
