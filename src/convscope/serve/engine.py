"""The web app's engine: models, samples, decoding uploads and running methods, without HTTP.

Safety rules kept here (the HTTP layer in :mod:`convscope.serve.app` only translates):

* **Only images**: an upload is decoded by Pillow from memory; its format must be one of
  :attr:`Limits.formats`, whatever the client claims. Its pixel count is checked from the header
  before any pixel is decoded (decompression bombs are refused unread).
* **No path from a request reaches the file system**: models are loaded at start-up from specs
  given on the command line; a request names a model by one of those specs, a sample by its
  index, a layer by one of the names listed for that model, and a method by its registry name.
  Every one of these is looked up in a table built at start-up.
* **One model shared by concurrent requests**: each request runs a method through
  :func:`~convscope.explain`, whose hooks are scoped by :func:`~convscope.capture` and whose
  state guard flips the model to eval mode with frozen weights and back. Two requests running at
  once on one module would see each other's hooks and state flips, and ``explain`` seeds torch's
  process-wide random generator. So all model work is serialised by one lock
  (:attr:`Engine.lock`): a request holds it from the first forward pass to the last. On a CPU
  this costs little, since torch already spreads one request over the cores.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ImageLoadError, InputError
from ..models import LoadedModel, load_model
from ..registry import get_method, list_methods
from ..results import _upscale, colorize, data_uri

__all__ = ["Engine", "Limits", "featvis_available"]


def featvis_available() -> bool:
    """Whether the feature-visualisation module is installed (channel visualisations)."""
    import importlib.util

    return (importlib.util.find_spec("convscope.featvis") is not None
            and importlib.util.find_spec("convscope.serve._featvis") is not None)


@dataclass(frozen=True)
class Limits:
    """Request limits.

    Attributes:
        max_upload_bytes: largest request body accepted (the HTTP layer enforces it while reading).
        max_pixels: largest image accepted, width x height.
        formats: image formats accepted, as Pillow names them.
        max_channels: most channels shown at once by the layer browser.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 24_000_000
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
    max_channels: int = 32


class UnsupportedImage(ImageLoadError):
    """The upload is not an image of an accepted format (HTTP 415)."""


class TooLarge(InputError):
    """The upload is over a size limit (HTTP 413)."""


def _samples() -> list[tuple[str, Image.Image]]:
    """Bundled sample images: test digits, clean and with the planted cue (generated, not files)."""
    from ..datasets import digits, planted_cue
    from ..models.preprocessing import display_array

    x, y = digits().split("test")
    picks: list[int] = []
    for cls in range(10):  # one digit per class, the first of each in the test split
        picks.append(int((y == cls).nonzero()[0, 0]))
    cue = planted_cue(x[picks], y[picks])
    out = []
    for k, i in enumerate(picks):
        for label, img in ((f"digit {int(y[i])}", x[i]), (f"digit {int(y[i])} + cue", cue.images[k])):
            a = (display_array(img)[..., 0] * 255 + 0.5).astype(np.uint8)
            out.append((label, Image.fromarray(a, "L")))
    return out


def _spatial_layers(lm: LoadedModel) -> list[dict[str, Any]]:
    """Layers that output a (B, C, H, W) map and run once per forward pass, with their shapes."""
    from ..hooks import capture, layer_names

    net = lm.model
    pre = lm.preprocessing
    x = torch.zeros(1, pre.channels, *pre.size)
    p = next(net.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    with capture(net, layer_names(net)) as cap, torch.no_grad():
        net(x)
        acts = cap.activations
        kinds = {n: type(m).__name__ for n, m in cap.modules.items()}
    out = []
    for name, a in acts.items():
        if a.ndim == 4 and min(a.shape[2:]) >= 1:
            out.append({"name": name, "type": kinds.get(name, ""), "shape": list(a.shape[1:]),
                        "default": name == lm.default_layer})
    return out


class Engine:
    """Loaded models, samples and the operations the web app offers.

    Args:
        models: model specs (bundled names, ``torchvision:<arch>``, ...) or loaded models.
        weights: weights for specs that take them (``"default"``, ``"none"``); bundled models
            always use their bundled weights.
        limits: request limits.
    """

    def __init__(
        self,
        models: Sequence[str | LoadedModel] = ("digits-cnn", "digits-cnn-cue"),
        *,
        weights: str | None = "default",
        limits: Limits | None = None,
    ) -> None:
        from ..models import bundled_models

        self.limits = limits or Limits()
        self.lock = threading.Lock()
        self.models: dict[str, LoadedModel] = {}
        for spec in models:
            if isinstance(spec, LoadedModel):
                lm = spec
            elif spec in bundled_models():
                lm = load_model(spec)
            else:
                w = None if weights is None or str(weights).lower() == "none" else weights
                lm = load_model(spec, weights=w)
            self.models[lm.name] = lm
        if not self.models:
            raise InputError("no model to serve; name at least one with --model")
        self.layers = {name: _spatial_layers(lm) for name, lm in self.models.items()}
        self.samples = _samples()
        self._sample_png = [data_uri(img) for _, img in self.samples]
        self._vis_cache: OrderedDict[tuple[str, str, int], str] = OrderedDict()

    # --- look-ups: every name from a request is checked against a table ------------------------
    def model(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            raise InputError(
                f"unknown model {name!r}; this server has: {', '.join(self.models)}"
            ) from None

    def layer(self, model: str, name: str | None) -> str | None:
        if name in (None, ""):
            return None
        known = [d["name"] for d in self.layers[model]]
        if name not in known:
            raise InputError(f"unknown layer {name!r} for {model}; pick one the app lists")
        return name

    def sample(self, index: int) -> Image.Image:
        if not 0 <= index < len(self.samples):
            raise InputError(f"no sample {index}; there are {len(self.samples)}")
        return self.samples[index][1]

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls."""
        return {
            "models": [
                {
                    "name": name,
                    "classes": list(lm.class_names),
                    "input": [lm.preprocessing.channels, *lm.preprocessing.size],
                    "default_layer": lm.default_layer,
                    "layers": self.layers[name],
                    "summary": lm.card.get("summary", ""),
                }
                for name, lm in self.models.items()
            ],
            "methods": [
                {
                    "name": m.name,
                    "family": m.family,
                    "needs_layer": m.needs_layer,
                    "signed": m.signed,
                    "summary": m.summary,
                    "caveats": m.caveats,
                    "reference": m.reference,
                    "fast_options": {k: _plain(v) for k, v in m.fast_options.items()},
                }
                for m in list_methods()
            ],
            "samples": [{"index": i, "label": lab, "src": self._sample_png[i]}
                        for i, (lab, _) in enumerate(self.samples)],
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                       "max_pixels": self.limits.max_pixels,
                       "formats": list(self.limits.formats)},
            "featvis": featvis_available(),
        }

    # --- images -------------------------------------------------------------------------------
    def decode(self, data: bytes) -> Image.Image:
        """Decode an upload held in memory; refuse non-images, other formats and huge images."""
        from ..image import load_image

        if len(data) > self.limits.max_upload_bytes:
            raise TooLarge(f"the upload has {len(data)} bytes, over the limit of "
                           f"{self.limits.max_upload_bytes}")
        if not data:
            raise UnsupportedImage("the upload is empty; choose an image file")
        try:
            img = Image.open(io.BytesIO(data))
        except Exception:
            raise UnsupportedImage("the upload is not an image Pillow can read") from None
        fmt = (img.format or "").upper()
        if fmt not in self.limits.formats:
            raise UnsupportedImage(
                f"images of format {fmt or 'unknown'} are not accepted; use one of "
                f"{', '.join(self.limits.formats)}"
            )
        if img.width * img.height > self.limits.max_pixels:
            raise TooLarge(f"the image has {img.width}x{img.height} pixels, over the limit of "
                           f"{self.limits.max_pixels}")
        try:
            img.load()  # first frame only, for animated formats
        except Exception:
            raise UnsupportedImage("the image could not be decoded (truncated or corrupt?)") from None
        return load_image(img, max_pixels=self.limits.max_pixels)

    # --- operations ---------------------------------------------------------------------------
    def explain(
        self,
        model: str,
        method: str,
        image: Image.Image,
        *,
        target: str | None = None,
        layer: str | None = None,
        fast: bool = False,
        topk: int = 5,
    ) -> dict[str, Any]:
        """Run ``method`` on ``image`` and return the pictures and numbers the page shows."""
        from ..api import explain

        lm = self.model(model)
        info = get_method(method)
        lay = self.layer(model, layer) if info.needs_layer else None
        tgt = _parse_target(target)
        opts = dict(info.fast_options) if fast else {}
        t0 = time.perf_counter()
        with self.lock:
            e = explain(lm, image, method=method, target=tgt, layer=lay, **opts)
        elapsed = time.perf_counter() - t0
        probs = e.probabilities[0] if e.probabilities is not None else None
        top: list[dict[str, Any]] = []
        if probs is not None:
            order = torch.argsort(probs, descending=True, stable=True)[: max(1, min(int(topk), 20))]
            top = [{"index": int(i), "name": e.class_names[int(i)], "p": float(probs[int(i)])}
                   for i in order]
        h = e.heatmap(0)
        small = min(e.images.shape[1:3]) < 128
        return {
            "model": lm.name,
            "method": info.name,
            "family": info.family,
            "signed": e.signed,
            "summary": info.summary,
            "caveats": info.caveats,
            "reference": info.reference,
            "target": e.target_name(0),
            "target_index": e.targets[0],
            "target_p": None if probs is None or e.targets[0] is None else float(probs[e.targets[0]]),
            "layer": e.layer,
            "options": {k: _plain(v) for k, v in opts.items()},
            "fast": bool(fast and opts),
            "diagnostics": {k: _plain(v) for k, v in e.diagnostics.items()},
            "probabilities": top,
            "input": data_uri(_upscale(e.images[0], 256)),
            "overlay": data_uri(e.overlay(0, min_side=256)),
            "heatmap": data_uri(_upscale(colorize(h, signed=e.signed), 256)),
            "colorbar": _colorbar(e.signed),
            "pixelated": small,
            "elapsed_ms": round(elapsed * 1000, 1),
        }

    def activations(self, model: str, layer: str, image: Image.Image, *, n: int = 16,
                    vis: bool = False) -> dict[str, Any]:
        """The ``n`` most active channels of ``layer`` for ``image``, each as a small picture;
        with ``vis``, also each channel's feature visualisation (seconds per layer on a CPU)."""
        from ..api import prepare_inputs
        from ..hooks import capture

        lm = self.model(model)
        lay = self.layer(model, layer)
        if lay is None:
            raise InputError("pick a layer")
        n = max(1, min(int(n), self.limits.max_channels))
        x, disp, _ = prepare_inputs(image, lm.preprocessing, generic=lm.generic)
        with self.lock:
            p = next(lm.model.parameters(), None)
            if p is not None:
                x = x.to(p.device)
            with capture(lm.model, lay) as cap, torch.no_grad():
                lm.model(x)
                a = cap.activation(lay)[0].detach().float().cpu()
        means = a.mean((1, 2))
        order = torch.argsort(means, descending=True, stable=True)[:n]
        hi = float(a[order].amax()) if a.numel() else 1.0
        cells: list[dict[str, Any]] = []
        for c in order.tolist():
            m = np.clip(a[c].clamp(min=0).numpy() / max(hi, 1e-12), 0, 1)  # one scale for all
            img = _upscale(colorize(m, signed=False, cmap="viridis"), 96)
            cells.append({"channel": int(c), "mean": float(means[c]), "src": data_uri(img)})
        pictures = None
        if vis and featvis_available():
            pictures = self._channel_vis(model, lay, [cell["channel"] for cell in cells])
            for cell in cells:
                cell["vis"] = pictures.get(cell["channel"])
        return {"model": model, "layer": lay, "channels": int(a.shape[0]),
                "shape": list(a.shape), "input": data_uri(_upscale(disp[0], 128)), "top": cells,
                "featvis": pictures is not None}

    def _channel_vis(self, model: str, layer: str, channels: list[int]) -> dict[int, str]:
        """Channel visualisations from :mod:`convscope.featvis`, cached per (model, layer, channel)."""
        from . import _featvis

        missing = [c for c in channels if (model, layer, c) not in self._vis_cache]
        if missing:
            with self.lock:
                pictures = _featvis.channel_pictures(self.model(model), layer, missing)
            for c, src in pictures.items():
                self._vis_cache[(model, layer, c)] = src
                while len(self._vis_cache) > 512:
                    self._vis_cache.popitem(last=False)
        return {c: self._vis_cache[(model, layer, c)] for c in channels
                if (model, layer, c) in self._vis_cache}


def _parse_target(value: str | None) -> Any:
    if value is None or str(value).strip() == "":
        return None
    v = str(value).strip()
    return int(v) if v.lstrip("-").isdigit() else v


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return repr(v)


_COLORBARS: dict[bool, str] = {}


def _colorbar(signed: bool) -> str:
    if signed not in _COLORBARS:
        ramp = np.linspace(-1 if signed else 0, 1, 256)[None].repeat(10, 0)
        rgb = (colorize(ramp, signed=signed) * 255).astype(np.uint8)
        _COLORBARS[signed] = data_uri(Image.fromarray(rgb))
    return _COLORBARS[signed]
