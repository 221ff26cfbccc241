"""What the web app accepts: request :class:`Limits`, and :func:`decode_upload`, which refuses a
non-image, a format not accepted or an image over the limits before any model sees it."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from convscope.core.errors import ImageLoadError, InputError

__all__ = ["Limits", "TooLarge", "UnsupportedImage", "decode_upload"]

@dataclass(frozen=True)
class Limits:
    """Request limits.

    Attributes:
        max_upload_bytes: largest request body accepted (the HTTP layer enforces it while reading).
        max_pixels: largest image accepted, width x height.
        formats: image formats accepted, as Pillow names them.
        max_channels: most channels shown at once by the layer browser.
        max_queue: most jobs waiting for the model at once (the running one not counted); one
            more is refused with :class:`QueueFull`.
        timeout_s: longest a job may wait plus run, in seconds, before :class:`TimedOut`.
        evaluate_timeout_s: longest a "Which method to trust" evaluation may wait plus run.
        max_evaluate_images: most images one evaluation scores.

    Raises:
        InputError: a limit is not a positive, finite number (``max_queue``: a positive integer).
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 24_000_000
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
    max_channels: int = 32
    max_queue: int = 8
    timeout_s: float = 60.0
    evaluate_timeout_s: float = 900.0
    max_evaluate_images: int = 64

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_channels", "max_queue", "max_evaluate_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"Limits.{name} must be a positive integer, got {v!r}")
        for name in ("timeout_s", "evaluate_timeout_s"):
            t = getattr(self, name)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise InputError(f"Limits.{name} must be a positive number of seconds, got {t!r}")


class UnsupportedImage(ImageLoadError):
    """The upload is not an image of an accepted format (HTTP 415)."""


class TooLarge(InputError):
    """The upload is over a size limit (HTTP 413)."""


def decode_upload(data: bytes, limits: Limits) -> Image.Image:
    """Decode an upload held in memory; refuse non-images, other formats and huge images."""
    from convscope.core.image import load_image

    if len(data) > limits.max_upload_bytes:
        raise TooLarge(f"the upload has {len(data)} bytes, over the limit of "
                       f"{limits.max_upload_bytes}")
    if not data:
        raise UnsupportedImage("the upload is empty; choose an image file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own guard, far above max_pixels by default
        raise TooLarge("the image has too many pixels, over the limit of "
                       f"{limits.max_pixels}") from None
    except Exception:
        raise UnsupportedImage("the upload is not an image Pillow can read") from None
    fmt = (img.format or "").upper()
    if fmt not in limits.formats:
        raise UnsupportedImage(
            f"images of format {fmt or 'unknown'} are not accepted; use one of "
            f"{', '.join(limits.formats)}"
        )
    if img.width * img.height > limits.max_pixels:
        raise TooLarge(f"the image has {img.width}x{img.height} pixels, over the limit of "
                       f"{limits.max_pixels}")
    try:
        img.load()  # first frame only, for animated formats
    except Exception:
        raise UnsupportedImage("the image could not be decoded (truncated or corrupt?)") from None
    return load_image(img, max_pixels=limits.max_pixels)
