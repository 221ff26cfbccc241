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
  process-wide random generator. So all model work runs as jobs of one :class:`JobQueue`, one
  after the other on a single worker thread. On a CPU this costs little, since torch already
  spreads one job over the cores; one thread also keeps the allocator from spreading tensors over
  one malloc arena per request thread.
* **Bounded queue, time limit, no starvation**: at most :attr:`Limits.max_queue` jobs wait
  (:class:`QueueFull` beyond, HTTP 429); a job whose wait plus run passes
  :attr:`Limits.timeout_s` is answered :class:`TimedOut` (HTTP 503) and stopped at its next
  forward pass (or never started). Heavy jobs (:func:`is_heavy`) wait in their own lane, and
  cheap jobs go first, so a cheap request waits for at most the job running now, plus one heavy
  job per :data:`LIGHT_BURST` cheap jobs ahead of it.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import io
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from ..errors import ConvscopeError, ImageLoadError, InputError
from ..models import LoadedModel, load_model
from ..registry import MethodInfo, get_method, list_methods
from ..results import _upscale, colorize, data_uri

__all__ = ["Busy", "Engine", "JobQueue", "Limits", "QueueFull", "TimedOut", "TooLarge",
           "UnsupportedImage", "featvis_available", "is_heavy"]

T = TypeVar("T")

_OUT_OF_TIME = ("the request ran out of time waiting for the model or running on it; try again, "
                "or pick a cheaper method or the quick preview")

#: Cheap jobs served in a row while a heavy job waits, before that heavy job gets its turn.
LIGHT_BURST = 4


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
        max_queue: most jobs waiting for the model at once (the running one not counted); one
            more is refused with :class:`QueueFull`.
        timeout_s: longest a job may wait plus run, in seconds, before :class:`TimedOut`.

    Raises:
        InputError: a limit is not a positive, finite number (``max_queue``: a positive integer).
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 24_000_000
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
    max_channels: int = 32
    max_queue: int = 8
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_channels", "max_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"Limits.{name} must be a positive integer, got {v!r}")
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise InputError(f"Limits.timeout_s must be a positive number of seconds, got {t!r}")


class UnsupportedImage(ImageLoadError):
    """The upload is not an image of an accepted format (HTTP 415)."""


class TooLarge(InputError):
    """The upload is over a size limit (HTTP 413)."""


class Busy(ConvscopeError):
    """The app cannot take the job now; ``retry_after`` is a guess, in whole seconds, of when it
    could (HTTP 429 or 503 with a ``Retry-After`` header)."""

    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class QueueFull(Busy):
    """:attr:`Limits.max_queue` jobs already wait (HTTP 429)."""

    status = 429


class TimedOut(Busy):
    """The job's wait plus run passed :attr:`Limits.timeout_s` (HTTP 503)."""

    status = 503


def is_heavy(info: MethodInfo) -> bool:
    """Whether a method goes to the heavy lane of the :class:`JobQueue`.

    The registry's gradient-free methods (the perturbation family, Score-CAM, Ablation-CAM,
    EigenCAM) replace one backward pass by many forward passes over masked or perturbed inputs,
    one per mask, window or channel, so their cost grows with the image and the layer; EigenCAM
    is gradient-free but needs a single pass, and rides along (it only waits a little longer).
    """
    return info.black_box or not info.needs_gradients


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)`` (hand freed heap pages back to the system), or a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> None:
        trim(0)

    return call


class _Job:
    __slots__ = ("fn", "heavy", "deadline", "future", "abandoned", "queue")

    def __init__(self, fn: Callable[[Callable[[], bool]], Any], heavy: bool, deadline: float,
                 queue: JobQueue) -> None:
        self.fn = fn
        self.heavy = heavy
        self.deadline = deadline
        self.future: Future[Any] = Future()
        self.abandoned = False
        self.queue = queue

    def expired(self) -> bool:
        """Whether the job should stop: its deadline passed, or the queue is closing."""
        return self.queue.closing or time.monotonic() >= self.deadline


class JobQueue:
    """Runs jobs one at a time on one worker thread, from two lanes, with a bounded wait.

    A job is a function ``fn(expired)``; it should call ``expired()`` at safe points and stop
    when it returns True (its deadline passed, or the queue is closing):
    :meth:`Engine.explain` checks before every forward pass of the model. Cheap jobs
    go first; a heavy job waiting behind :data:`LIGHT_BURST` cheap jobs served in a row goes next.
    Within a lane, jobs go in arrival order.

    Args:
        max_queue: most jobs waiting at once (the running one not counted).
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._light: deque[_Job] = deque()
        self._heavy: deque[_Job] = deque()
        self._burst = 0
        self._worker: threading.Thread | None = None
        self._job_s = 1.0  # running mean of a job's run time, for Retry-After
        self._trim = _malloc_trim()
        self._trimmed = 0.0
        self.closing = False
        atexit.register(self.close)  # a worker killed inside torch at exit aborts the process
        #: Jobs run to the end, and requests answered :class:`TimedOut`.
        self.done = 0
        self.timed_out = 0

    @property
    def waiting(self) -> int:
        """Jobs waiting for their turn now."""
        with self._cond:
            return len(self._light) + len(self._heavy)

    def _retry_after(self, ahead: int) -> int:
        return math.ceil(self._job_s * (ahead + 1))

    def close(self, timeout: float = 10.0) -> None:
        """Drop the waiting jobs, stop the running one at its next safe point, end the worker."""
        with self._cond:
            self.closing = True
            self._light.clear()
            self._heavy.clear()
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def run(self, fn: Callable[[Callable[[], bool]], T], *, heavy: bool, deadline: float) -> T:
        """Queue ``fn(expired)``, wait for its result and return it (or raise its error).

        Raises:
            QueueFull: :attr:`max_queue` jobs already wait.
            TimedOut: ``deadline`` passed before the job finished (the job is dropped if it has not
                started, and stops at its next safe point if it has).
        """
        job = _Job(fn, heavy, deadline, self)
        with self._cond:
            if self.closing:
                raise Busy("the app is shutting down", 60)
            ahead = len(self._light) + len(self._heavy)
            if ahead >= self.max_queue:
                raise QueueFull(f"the app is busy: {ahead} jobs are waiting; try again shortly",
                                self._retry_after(ahead))
            (self._heavy if heavy else self._light).append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="convscope-jobs", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        try:
            return job.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (FutureTimeout, TimedOut):
            with self._cond:
                job.abandoned = True
                for lane in (self._light, self._heavy):
                    if job in lane:
                        lane.remove(job)
                ahead = len(self._light) + len(self._heavy)
                self.timed_out += 1
            raise TimedOut(_OUT_OF_TIME, self._retry_after(ahead)) from None

    def _next(self) -> _Job:
        # called with the condition held and at least one job waiting
        if self._heavy and (not self._light or self._burst >= LIGHT_BURST):
            self._burst = 0
            return self._heavy.popleft()
        self._burst = self._burst + 1 if self._heavy else 0
        return self._light.popleft()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._light or self._heavy or self.closing):
                    self._cond.wait()
                if self.closing:
                    return
                job = self._next()
            if job.abandoned or job.expired():
                # never start a job whose deadline passed while it waited
                if not job.abandoned:
                    job.future.set_exception(TimedOut(_OUT_OF_TIME, self._retry_after(0)))
                continue
            t0 = time.monotonic()
            try:
                job.future.set_result(job.fn(job.expired))
                self.done += 1
            except BaseException as exc:  # handed to the waiting request
                job.future.set_exception(exc)
            del job  # hold nothing of a finished job while waiting for the next
            now = time.monotonic()
            self._job_s = 0.8 * self._job_s + 0.2 * (now - t0)
            # Hand freed heap pages back to the system: glibc keeps them otherwise, in one arena
            # per thread that ever allocated, and the process only grows. A trim after a large
            # job takes tens of ms, so it runs when the queue is empty, or once a second at most.
            if not self.waiting or now - self._trimmed > 1.0:
                self._trim()
                self._trimmed = time.monotonic()


@contextmanager
def _stop_after(model: torch.nn.Module, expired: Callable[[], bool]) -> Iterator[None]:
    """Raise :class:`TimedOut` at the first forward pass of ``model`` that starts once ``expired()``.

    A forward pass is a safe point: :func:`~convscope.explain` and :func:`~convscope.capture` undo
    their hooks and state flips when an error passes through them.
    """

    def check(_module: Any, _inputs: Any) -> None:
        if expired():
            raise TimedOut(_OUT_OF_TIME, 1)

    handle = model.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


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
    """Layers that output a (B, C, H, W) map and run once per forward pass, with their shapes,
    and the model's default layer whatever its output (``"spatial"`` says which).

    Fills in the default layer of a generic model (a plain ``nn.Module``), which
    :func:`~convscope.explain` would otherwise find only at the first request, so the page can
    show the layer the API uses.
    """
    from ..hooks import capture, layer_names

    net = lm.model
    pre = lm.preprocessing
    x = torch.zeros(1, pre.channels, *pre.size)
    lm.fill_from_input(x)
    p = next(net.parameters(), None)
    if p is not None:
        x = x.to(p.device)
    with capture(net, layer_names(net)) as cap, torch.no_grad():
        net(x)
        acts = cap.activations
        kinds = {n: type(m).__name__ for n, m in cap.modules.items()}
    out = []
    for name, a in acts.items():
        spatial = a.ndim == 4 and min(a.shape[2:]) >= 1
        if spatial or name == lm.default_layer:
            out.append({"name": name, "type": kinds.get(name, ""), "shape": list(a.shape[1:]),
                        "default": name == lm.default_layer, "spatial": spatial})
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
        self.jobs = JobQueue(self.limits.max_queue)
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
        # The samples are generated test digits: they fit the bundled digits models only.
        self.takes_samples = {name: name in bundled_models() for name in self.models}
        self.samples = _samples()
        self._sample_png = [data_uri(img) for _, img in self.samples]
        self._vis_cache: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._vis_lock = threading.Lock()

    def close(self) -> None:
        """Stop the job queue's worker (waiting jobs are dropped); the engine takes no more jobs."""
        self.jobs.close()

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

    def sample(self, index: int, model: str | None = None) -> Image.Image:
        """Sample ``index``; with ``model``, only if the samples fit that model."""
        if model is not None and not self.takes_samples[self.model(model).name]:
            raise InputError(f"the samples are digits for the bundled digits models, not for {model}; "
                             "upload an image")
        if not 0 <= index < len(self.samples):
            raise InputError(f"no sample {index}; there are {len(self.samples)}")
        return self.samples[index][1]

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.limits.timeout_s if deadline is None else deadline

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
                    "samples": self.takes_samples[name],
                    "preprocessing": lm.preprocessing.describe(),
                    "weights": lm.weights,
                    "assumed": list(lm.assumed),
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
                    "heavy": is_heavy(m),
                }
                for m in list_methods()
            ],
            "samples": [{"index": i, "label": lab, "src": self._sample_png[i]}
                        for i, (lab, _) in enumerate(self.samples)],
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                       "max_pixels": self.limits.max_pixels,
                       "formats": list(self.limits.formats),
                       "max_queue": self.limits.max_queue,
                       "timeout_s": self.limits.timeout_s},
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
        except Image.DecompressionBombError:  # Pillow's own guard, far above max_pixels by default
            raise TooLarge("the image has too many pixels, over the limit of "
                           f"{self.limits.max_pixels}") from None
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
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Run ``method`` on ``image`` and return the pictures and numbers the page shows.

        The model work is a job of :attr:`jobs`, in the heavy lane when :func:`is_heavy`, that must
        finish by ``deadline`` (:func:`time.monotonic` time; default: :attr:`Limits.timeout_s`
        from now).

        Raises:
            InputError: an unknown model, layer or target.
            QueueFull, TimedOut: see :meth:`JobQueue.run`.
        """
        from ..api import explain

        lm = self.model(model)
        info = get_method(method)
        lay = self.layer(model, layer) if info.needs_layer else None
        tgt = _parse_target(target)
        opts = dict(info.fast_options) if fast else {}
        clock = [time.perf_counter()]  # queued, started, finished

        def job(expired: Callable[[], bool]) -> Any:
            clock.append(time.perf_counter())
            with _stop_after(lm.model, expired):
                out = explain(lm, image, method=method, target=tgt, layer=lay, **opts)
            clock.append(time.perf_counter())
            return out

        e = self.jobs.run(job, heavy=is_heavy(info), deadline=self._deadline(deadline))
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
            "model_info": _plain(e.model_info),
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
            "elapsed_ms": round((clock[2] - clock[1]) * 1000, 1),
            "waited_ms": round((clock[1] - clock[0]) * 1000, 1),
            "heavy": is_heavy(info),
        }

    def activations(self, model: str, layer: str, image: Image.Image, *, n: int = 16,
                    vis: bool = False, deadline: float | None = None) -> dict[str, Any]:
        """The ``n`` most active channels of ``layer`` for ``image``, each as a small picture;
        with ``vis``, also each channel's feature visualisation (seconds per layer on a CPU).

        One forward pass, a cheap job; the visualisations are a heavy one. Both must finish by
        ``deadline`` (see :meth:`explain`)."""
        from ..api import prepare_inputs
        from ..hooks import capture

        lm = self.model(model)
        lay = self.layer(model, layer)
        if lay is None:
            raise InputError("pick a layer")
        if not any(d["name"] == lay and d["spatial"] for d in self.layers[model]):
            raise InputError(f"layer {lay!r} of {model} has no (C, H, W) map to browse; pick another")
        n = max(1, min(int(n), self.limits.max_channels))
        x, disp, _ = prepare_inputs(image, lm.preprocessing, generic=lm.any_channels)
        until = self._deadline(deadline)

        def job(_expired: Callable[[], bool]) -> torch.Tensor:
            p = next(lm.model.parameters(), None)
            with capture(lm.model, lay) as cap, torch.no_grad():
                lm.model(x if p is None else x.to(p.device))
                return cap.activation(lay)[0].detach().float().cpu()

        a = self.jobs.run(job, heavy=False, deadline=until)
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
            pictures = self._channel_vis(model, lay, [cell["channel"] for cell in cells], until)
            for cell in cells:
                cell["vis"] = pictures.get(cell["channel"])
        return {"model": model, "layer": lay, "channels": int(a.shape[0]),
                "shape": list(a.shape), "input": data_uri(_upscale(disp[0], 128)), "top": cells,
                "featvis": pictures is not None}

    def _channel_vis(self, model: str, layer: str, channels: list[int],
                     deadline: float) -> dict[int, str]:
        """Channel visualisations from :mod:`convscope.featvis`, cached per (model, layer, channel)."""
        from . import _featvis

        with self._vis_lock:
            found = {c: self._vis_cache[(model, layer, c)] for c in channels
                     if (model, layer, c) in self._vis_cache}
        missing = [c for c in channels if c not in found]
        if missing:
            lm = self.model(model)

            def job(expired: Callable[[], bool]) -> dict[int, str]:
                with _stop_after(lm.model, expired):
                    return _featvis.channel_pictures(lm, layer, missing)

            pictures = self.jobs.run(job, heavy=True, deadline=deadline)
            found.update(pictures)
            with self._vis_lock:  # a bounded cache: 512 small pictures at most
                for c, src in pictures.items():
                    self._vis_cache[(model, layer, c)] = src
                while len(self._vis_cache) > 512:
                    self._vis_cache.popitem(last=False)
        return found


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
