"""Image parameterisations: ``nn.Module``s whose forward returns (B, C, H, W) pixels in [0, 1].

The optimiser moves a module's parameters; what those parameters mean changes what gradient
ascent finds (Olah et al., "Feature Visualization", Distill 2017, and Lucid ``optvis.param``):

* :class:`PixelImage`: one parameter per pixel. Plain gradient ascent on pixels lands on
  high-frequency patterns.
* :class:`FFTImage`: the image's Fourier spectrum, each frequency scaled by
  ``1 / max(f, 1/max(H, W)) ** decay`` before the inverse FFT. Gradient steps then move low
  frequencies more than high ones (a preconditioner that whitens natural-image statistics), so
  results are smoother without a penalty.
* :class:`ColorDecorrelation`: colours live in a decorrelated space and are mapped to RGB with
  the square root of ImageNet's colour covariance, so each parameter moves a natural colour
  direction (3-channel images only; 1-channel images skip it).

Both image classes squash the unconstrained values into [0, 1] with a sigmoid (``squash=
"sigmoid"``, Lucid's choice) or keep them as they are and clip after every step
(``squash="clip"``, which keeps a photo unchanged at initialisation: DeepDream).

Every class has ``load_image(img)``, which sets the parameters so that the module returns
``img`` (exactly up to the sigmoid's clamp at 0 and 1). It starts an optimisation from a photo
and projects a processed image back into parameter space (blur every N steps).
"""

from __future__ import annotations

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.validate import check_values, ints

__all__ = ["ColorDecorrelation", "FFTImage", "ImageParam", "PixelImage", "image"]

# Square root of the colour covariance of ImageNet images (a 3x3 whitening basis), the same
# statistic Lucid uses; columns are scaled so the largest has unit norm.
_COLOR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02],
     [0.27, 0.00, -0.05],
     [0.27, -0.09, 0.03]]
)
_EPS = 1e-4


class ColorDecorrelation(nn.Module):
    """Map decorrelated colour coordinates to RGB: ``rgb = M @ c`` per pixel.

    Shape:
        input (B, 3, H, W) -> output (B, 3, H, W). Channels other than 3 pass through.
    """

    def __init__(self) -> None:
        super().__init__()
        m = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
        self.register_buffer("matrix", m)
        self.register_buffer("inverse", torch.linalg.inv(m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x
        return torch.einsum("ij,bjhw->bihw", self.matrix, x)

    def invert(self, rgb: torch.Tensor) -> torch.Tensor:
        """Decorrelated coordinates of ``rgb`` (the inverse map)."""
        if rgb.shape[1] != 3:
            return rgb
        return torch.einsum("ij,bjhw->bihw", self.inverse, rgb)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise InputError(f"image size must be positive, got {size}")
    return h, w


class ImageParam(nn.Module):
    """Base of the image parameterisations: raw values -> colour basis -> [0, 1].

    Subclasses implement ``raw()`` (the unconstrained (B, C, H, W) values) and
    ``load_raw(values)`` (its inverse).
    """

    def __init__(self, batch: int, channels: int, size: int | tuple[int, int], *,
                 decorrelate: bool = True, squash: str = "sigmoid") -> None:
        super().__init__()
        check_values(batch=(batch, ints(1)), channels=(channels, ints(1)))
        if squash not in ("sigmoid", "clip"):
            raise InputError(f"squash must be 'sigmoid' or 'clip', got {squash!r}")
        self.batch, self.channels = int(batch), int(channels)
        self.height, self.width = _size(size)
        self.squash = squash
        self.color = ColorDecorrelation() if decorrelate and channels == 3 else None

    def raw(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_raw(self, values: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        x = self.raw()
        if self.color is not None:
            x = self.color(x)
        if self.squash == "sigmoid":
            return torch.sigmoid(x)
        return x.clamp(0.0, 1.0)

    @torch.no_grad()
    def load_image(self, img: torch.Tensor) -> None:
        """Set the parameters so that forward returns ``img`` (clamped into (0, 1) for the sigmoid).

        Shape:
            img: (B, C, H, W) or (C, H, W) pixels in [0, 1]; a batch of 1 is broadcast.
        """
        t = img.detach().to(self._device(), torch.float32)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.shape[1:] != (self.channels, self.height, self.width):
            raise InputError(
                f"load_image: expected ({self.channels}, {self.height}, {self.width}) images, got "
                f"{tuple(t.shape[1:])}"
            )
        t = t.expand(self.batch, -1, -1, -1) if t.shape[0] == 1 else t
        if t.shape[0] != self.batch:
            raise InputError(f"load_image: {t.shape[0]} images for a batch of {self.batch}")
        if self.squash == "sigmoid":
            t = torch.logit(t.clamp(_EPS, 1 - _EPS))
        if self.color is not None:
            t = self.color.invert(t)
        self.load_raw(t)

    def project(self) -> None:
        """Called by the engine after each step: clip mode keeps pixels in [0, 1]."""
        if self.squash == "clip" and self.color is None and isinstance(self, PixelImage):
            self.pixels.data.clamp_(0.0, 1.0)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class PixelImage(ImageParam):
    """One parameter per pixel (and channel).

    Args:
        size: ``H`` or ``(H, W)``.
        batch: number of images.
        channels: 3 (RGB) or 1 (grayscale), or any other count.
        sd: standard deviation of the initial noise.
        decorrelate: optimise in the decorrelated colour basis (3 channels only).
        squash: ``"sigmoid"`` or ``"clip"`` (see the module docstring).
        generator: RNG for the initial noise (default: the global one).
    """

    def __init__(self, size: int | tuple[int, int], batch: int = 1, channels: int = 3, *,
                 sd: float = 0.01, decorrelate: bool = False, squash: str = "sigmoid",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(batch, channels, size, decorrelate=decorrelate, squash=squash)
        init = torch.randn(self.batch, self.channels, self.height, self.width, generator=generator) * sd
        if squash == "clip":
            init = init + 0.5
        self.pixels = nn.Parameter(init)

    def raw(self) -> torch.Tensor:
        return self.pixels

    def load_raw(self, values: torch.Tensor) -> None:
        self.pixels.data.copy_(values)


class FFTImage(ImageParam):
    """The image as a scaled Fourier spectrum (Lucid's ``fft_image``).

    ``raw = irfft2(scale * spectrum) / 4`` with ``scale(f) = 1 / max(f, 1 / max(H, W)) ** decay``
    for the frequency magnitude ``f`` in cycles per pixel, and the orthonormal inverse FFT (so a
    unit step in the spectrum is a unit step in pixel energy before scaling).

    Args:
        size: ``H`` or ``(H, W)``; any size, odd included.
        batch, channels, decorrelate, squash, generator: as for :class:`PixelImage`.
        sd: standard deviation of the initial spectrum noise.
        decay: frequency decay power (1: the 1/f of natural images; 0: flat, like pixels).
    """

    scale: torch.Tensor

    def __init__(self, size: int | tuple[int, int], batch: int = 1, channels: int = 3, *,
                 sd: float = 0.01, decay: float = 1.0, decorrelate: bool = True,
                 squash: str = "sigmoid", generator: torch.Generator | None = None) -> None:
        super().__init__(batch, channels, size, decorrelate=decorrelate, squash=squash)
        h, w = self.height, self.width
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / freq.clamp(min=1.0 / max(h, w)) ** decay
        scale = scale / 4.0  # Lucid's "magic" 4: keeps the initial image near mid-grey
        self.register_buffer("scale", scale)
        self.decay = float(decay)
        shape = (self.batch, self.channels, h, w // 2 + 1, 2)
        self.spectrum = nn.Parameter(torch.randn(shape, generator=generator) * sd)

    def raw(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spec, s=(self.height, self.width), norm="ortho")

    def load_raw(self, values: torch.Tensor) -> None:
        spec = torch.fft.rfft2(values, norm="ortho") / self.scale
        self.spectrum.data.copy_(torch.view_as_real(spec))


def image(
    size: int | tuple[int, int],
    batch: int = 1,
    channels: int = 3,
    *,
    fft: bool = True,
    decorrelate: bool = True,
    sd: float = 0.01,
    decay: float = 1.0,
    squash: str = "sigmoid",
    generator: torch.Generator | None = None,
) -> ImageParam:
    """The usual parameterisation: FFT with decorrelated colour, or plain pixels (``fft=False``)."""
    if fft:
        return FFTImage(size, batch, channels, sd=sd, decay=decay, decorrelate=decorrelate,
                        squash=squash, generator=generator)
    return PixelImage(size, batch, channels, sd=sd, decorrelate=decorrelate, squash=squash,
                      generator=generator)
