"""Preprocessing: from a user's image to the tensor a model expects, and back for display."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.image import ImageLike, load_image, pil_to_tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "RESAMPLE", "Preprocessing", "preprocessing_from"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The resize filters a :class:`Preprocessing` names, and PIL's for each.
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs.

    Attributes:
        size: (height, width) of the model input.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        channels: 1 for grayscale models, 3 for RGB.
        resize: shorter side the image is resized to before the centre crop to ``size``
            (``None``: resize straight to ``size``, ignoring the aspect ratio). The longer side
            keeps the aspect ratio, rounded down (as torchvision's ``Resize`` and Hugging Face's
            image processors do).
        resample: the PIL filter of the resize: one of :data:`RESAMPLE` (``"bilinear"``,
            ``"bicubic"``, ...).
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    resize: int | None = 256
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        h, w = (self.size if isinstance(self.size, (tuple, list)) else (self.size, self.size))
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8192 for v in (h, w)):
            raise InputError(f"preprocessing size must be 1..8192 pixels (height, width), got {self.size!r}")
        object.__setattr__(self, "size", (int(h), int(w)))
        if not (isinstance(self.channels, int) and 1 <= self.channels <= 64):
            raise InputError(
                f"preprocessing channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}"
            )
        for key in ("mean", "std"):
            v = tuple(float(a) for a in getattr(self, key))
            if len(v) != self.channels:
                raise InputError(
                    f"preprocessing {key} needs {self.channels} value(s) (one per channel), got {len(v)}"
                )
            if not all(np.isfinite(v)):
                raise InputError(f"preprocessing {key} must be finite numbers, got {v}")
            object.__setattr__(self, key, v)
        if not all(s > 0 for s in self.std):
            raise InputError(f"preprocessing std must be positive, got {self.std}")
        if self.resize is not None and not (isinstance(self.resize, int) and not isinstance(self.resize, bool)
                                            and min(self.size) <= self.resize <= 16384):
            raise InputError(
                f"preprocessing resize (the shorter side before the centre crop) must be an integer "
                f">= the crop size {min(self.size)}, or None to resize straight to the size; "
                f"got {self.resize!r}"
            )
        if not isinstance(self.resample, str) or self.resample.lower() not in RESAMPLE:
            raise InputError(
                f"preprocessing resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}"
            )
        object.__setattr__(self, "resample", self.resample.lower())

    def to_dict(self) -> dict[str, object]:
        """Plain data: size, mean, std, channels, resize (what results and reports record)."""
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "channels": self.channels, "resize": self.resize, "resample": self.resample}

    def describe(self) -> str:
        """One line for people: size, resize/crop, mean, std, channels."""
        h, w = self.size
        how = (f"resize the shorter side to {self.resize}, centre-crop {h}x{w}" if self.resize is not None
               else f"resize to {h}x{w}")
        fmt = ", ".join
        mode = "RGB" if self.channels == 3 else "grayscale"
        if self.resample != "bilinear":
            how += f", {self.resample} filter"
        return (f"{how} ({mode}), pixels in [0, 1] minus mean ({fmt(f'{m:.3g}' for m in self.mean)}) "
                f"over std ({fmt(f'{s:.3g}' for s in self.std)})")

    def to_display(self, image: ImageLike) -> Image.Image:
        """The image as the model sees it (resized, cropped, right colour mode), for display."""
        img = load_image(image)
        img = img.convert("L" if self.channels == 1 else "RGB")
        h, w = self.size
        how = RESAMPLE[self.resample]
        if self.resize is None:
            return img.resize((w, h), how)
        r = self.resize
        if img.width <= img.height:  # the shorter side becomes resize, the longer keeps the ratio
            nw, nh = r, int(r * img.height / img.width)
        else:
            nw, nh = int(r * img.width / img.height), r
        nw, nh = max(w, nw), max(h, nh)
        img = img.resize((nw, nh), how)
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


#: Presets a user can name in one word (``--preprocessing NAME``, ``preprocessing="NAME"``).
PRESETS: dict[str, dict[str, object]] = {
    "imagenet": {"size": (224, 224), "resize": 256, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                 "channels": 3},
    "none": {"size": (224, 224), "resize": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
             "channels": 3},
    "inception": {"size": (299, 299), "resize": 342, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                  "channels": 3},
    "clip": {"size": (224, 224), "resize": 224, "mean": (0.48145466, 0.4578275, 0.40821073),
             "std": (0.26862954, 0.26130258, 0.27577711), "channels": 3},
}
_ALIASES = {"unit": "none", "pixels": "none", "identity": "none", "raw": "none"}
_KEYS = ("preset", "size", "input_size", "mean", "std", "channels", "resize", "resample")


def _size(v: object) -> tuple[int, int]:
    if isinstance(v, bool):
        raise InputError(f"size must be an integer or [height, width], got {v!r}")
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):
        import re

        m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", v.lower())
        if m is None:
            raise InputError(f"size must be N or HxW (e.g. 48 or 48x64), got {v!r}")
        v = [int(m.group(1))] + ([int(m.group(2))] if m.group(2) else [])
    if isinstance(v, (list, tuple)) and len(v) in (1, 2, 3) and all(
            isinstance(a, int) and not isinstance(a, bool) for a in v):
        vals = list(v)[-2:] if len(v) == 3 else list(v)  # (C, H, W) as timm writes it
        return (vals[0], vals[-1]) if len(vals) == 2 else (vals[0], vals[0])
    raise InputError(f"size must be an integer or [height, width], got {v!r}")


def preprocessing_from(spec: object = None, **overrides: object) -> Preprocessing:
    """A :class:`Preprocessing` from a preset name, a dict, or an instance, with overrides.

    Args:
        spec: ``"imagenet"`` (224 px centre crop after resizing the shorter side to 256, ImageNet
            mean and std), ``"none"`` (aliases ``"unit"``, ``"pixels"``: pixels in [0, 1] as they
            are, resized straight to the size, default 224), ``"inception"``, ``"clip"``; a dict
            with any of ``preset``, ``size`` (or ``input_size``), ``mean``, ``std``, ``channels``,
            ``resize``, ``resample``; a :class:`Preprocessing`; or ``None`` (only the overrides,
            on ``"none"``).
        **overrides: ``size``, ``mean``, ``std``, ``channels``, ``resize``, ``resample`` (``None``
            values are ignored; pass ``resize=0`` or ``"none"`` to resize straight to the size).

    A stated ``mean`` or ``std`` of one value without ``channels`` means one channel (a grayscale
    model); give ``channels=3`` (or three values) for one value shared by three channels.

    Raises:
        InputError: an unknown preset or key, or a value out of range (the message names it).
    """
    base: dict[str, object]
    if isinstance(spec, Preprocessing):
        base = {"size": spec.size, "mean": spec.mean, "std": spec.std, "channels": spec.channels,
                "resize": spec.resize, "resample": spec.resample}
    elif isinstance(spec, str) or spec is None:
        name = _ALIASES.get(str(spec or "none").lower(), str(spec or "none").lower())
        if name not in PRESETS:
            import difflib

            close = difflib.get_close_matches(name, list(PRESETS) + list(_ALIASES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(
                f"unknown preprocessing preset {spec!r}{hint}; use one of {', '.join(PRESETS)}, or give "
                "size, mean, std and resize"
            )
        base = dict(PRESETS[name])
    elif isinstance(spec, dict):
        bad = [k for k in spec if k not in _KEYS]
        if bad:
            raise InputError(
                f"unknown preprocessing key(s) {', '.join(map(str, bad))}; use {', '.join(_KEYS)}"
            )
        d = dict(spec)
        if "preset" in d:
            base = dict(preprocessing_from(d.pop("preset")).to_dict())
        else:
            base = dict(PRESETS["none"])
        if "input_size" in d:
            d["size"] = d.pop("input_size")
        base.update(d)
    else:
        raise InputError(
            f"preprocessing must be a preset name, a dict or a Preprocessing, got {type(spec).__name__}"
        )
    stated: dict[str, object] = dict(spec) if isinstance(spec, dict) else {}
    for k, v in overrides.items():
        if v is not None:
            base[k] = stated[k] = v
    if "channels" not in stated and not isinstance(spec, Preprocessing) and any(
            _one_value(stated.get(k)) for k in ("mean", "std")) and not any(
            isinstance(base.get(k), (list, tuple)) and len(set(base[k])) > 1  # type: ignore[arg-type]
            for k in ("mean", "std")):
        base["channels"] = 1  # one mean / std value and no channel count: a grayscale model
    if "size" in base:
        base["size"] = _size(base["size"])
    r = base.get("resize")
    if isinstance(r, str) and r.lower() in ("none", "null"):
        base["resize"] = None
    ch = base.get("channels", 3)
    for key in ("mean", "std"):
        v = base.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            base[key] = (float(v),) * int(ch)  # type: ignore[call-overload]
        elif isinstance(v, (list, tuple)) and len(v) == 1 and isinstance(ch, int):
            base[key] = (float(v[0]),) * ch  # one value for every channel
        elif isinstance(v, (list, tuple)) and isinstance(ch, int) and len(v) != ch and len(set(v)) == 1:
            base[key] = (float(v[0]),) * ch  # a uniform preset value follows the channel count
    try:
        return Preprocessing(**base)  # type: ignore[arg-type]
    except TypeError as exc:
        raise InputError(f"bad preprocessing: {exc}") from None


def _one_value(v: object) -> bool:
    """Whether a stated mean or std has exactly one value (a number or a list of one)."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, (list, tuple)) and len(v) == 1)
