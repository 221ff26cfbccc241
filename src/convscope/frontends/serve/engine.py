"""The web app's engine: models, samples, decoding uploads and running methods, without HTTP.

Safety rules kept here (the HTTP layer in :mod:`convscope.frontends.serve.app` only translates):

* **Only images**: an upload is decoded by Pillow from memory; its format must be one of
  :attr:`Limits.formats`, whatever the client claims. Its pixel count is checked from the header
  before any pixel is decoded (decompression bombs are refused unread).
* **No path from a request reaches the file system**: models are loaded at start-up from specs
  given on the command line; a request names a model by one of those specs, a sample by its
  index, a layer by one of the names listed for that model, a method by its registry name and a
  result (for its downloads) by the random id it was answered with. Every one of these is looked
  up in a table built at start-up or kept in memory.
* **One model shared by concurrent requests**: all model work runs as jobs of one
  :class:`~convscope.frontends.serve.jobs.JobQueue` (two lanes, bounded, timed; see
  :mod:`convscope.frontends.serve.jobs`).
* **Options are checked before they queue**: a request's method options go through the
  registry's checks (:func:`~convscope.methods.registry.check_method_options`) in the request's thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.results import colorize, data_uri, upscale
from convscope.core.targets import check_topk, parse_target
from convscope.core.validate import check_values, ints
from convscope.frontends.serve._model_info import samples, spatial_layers
from convscope.frontends.serve._present import (
    VIEWS,
    Kept,
    NotFound,
    View,
    explanation_payload,
    grid_payload,
    method_catalogue,
    plain,
)
from convscope.frontends.serve.jobs import (
    LIGHT_BURST,
    Busy,
    JobQueue,
    QueueFull,
    TimedOut,
    is_heavy,
    stop_after,
)
from convscope.frontends.serve.limits import Limits, TooLarge, UnsupportedImage, decode_upload
from convscope.methods.registry import (
    MethodInfo,
    check_method_options,
    get_method,
    inapplicable,
    list_methods,
)
from convscope.models import LoadedModel, load_model

__all__ = ["LIGHT_BURST", "Busy", "Engine", "JobQueue", "Limits", "NotFound", "QueueFull", "TimedOut",
           "TooLarge", "UnsupportedImage", "featvis_available", "is_heavy"]

#: Results kept for their downloads (the oldest goes first).
KEEP_RESULTS = 32
#: Most methods in one method grid.
MAX_GRID_METHODS = 8


def featvis_available() -> bool:
    """Whether the feature-visualisation module is installed (channel visualisations)."""
    import importlib.util

    return (importlib.util.find_spec("convscope.methods.featvis") is not None
            and importlib.util.find_spec("convscope.frontends.serve._featvis") is not None)


class Engine:
    """Loaded models, samples and the operations the web app offers.

    Args:
        models: model specs (bundled names, ``torchvision:<arch>``, ...) or loaded models.
        weights: weights for specs that take them (``"default"``, ``"none"``); bundled models
            always use their bundled weights.
        limits: request limits.
        trust_card, trust_remote_code: as :func:`convscope.load_model` (a model card's Python
            file from outside the current folder; an ``hf:`` folder's own code).
    """

    def __init__(
        self,
        models: Sequence[str | LoadedModel] = ("digits-cnn", "digits-cnn-cue"),
        *,
        weights: str | None = "default",
        limits: Limits | None = None,
        trust_card: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        from convscope.models import bundled_models

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
                lm = load_model(spec, weights=w, trust_card=trust_card, trust_remote_code=trust_remote_code)
            self.models[lm.name] = lm
        if not self.models:
            raise InputError("no model to serve; name at least one with --model")
        self.layers = {name: spatial_layers(lm) for name, lm in self.models.items()}
        # The samples are generated test digits: they fit the bundled digits models only.
        self.takes_samples = {name: name in bundled_models() for name in self.models}
        self.samples = samples()
        self._sample_png = [data_uri(img) for _, img in self.samples]
        self._vis_cache: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        self._vis_lock = threading.Lock()
        self.kept = Kept(KEEP_RESULTS)  # results, for their downloads

    def close(self) -> None:
        """Stop the job queue's worker (waiting jobs fail at once: shutting down); no more jobs."""
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

    @staticmethod
    def options(info: MethodInfo, fast: bool, options: dict[str, Any] | None) -> dict[str, Any]:
        """The options a method runs with: its fast settings (with ``fast``), then ``options``,
        checked by the registry (unknown names, types, ranges, choices) before any work."""
        opts = {**(info.fast_options if fast else {}), **(options or {})}
        check_method_options(info, opts)
        return opts

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
                    # methods that do not apply to this model (registry `requires`), with the reason
                    "inapplicable": {m.name: why for m in list_methods()
                                     if (why := inapplicable(m, lm.model)) is not None},
                }
                for name, lm in self.models.items()
            ],
            "methods": method_catalogue(),
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
        """Decode an upload held in memory under this engine's limits (:func:`decode_upload`)."""
        return decode_upload(data, self.limits)

    # --- operations ---------------------------------------------------------------------------
    def _run(self, lm: LoadedModel, work: Callable[[], Any], *, heavy: bool,
             deadline: float | None) -> tuple[Any, dict[str, float]]:
        """Run ``work()`` as a job on ``lm``'s model, stopped at its next forward pass past the
        deadline; returns its result and the time it waited and ran, in ms."""
        clock = [time.perf_counter()]  # queued, started, finished

        def job(expired: Callable[[], bool]) -> Any:
            clock.append(time.perf_counter())
            with stop_after(lm.model, expired):
                out = work()
            clock.append(time.perf_counter())
            return out

        out = self.jobs.run(job, heavy=heavy, deadline=self._deadline(deadline))
        return out, {"elapsed_ms": round((clock[2] - clock[1]) * 1000, 1),
                     "waited_ms": round((clock[1] - clock[0]) * 1000, 1)}

    def download(self, rid: str, fmt: str) -> tuple[bytes, str]:
        """The bytes of kept result ``rid`` in format ``fmt`` and their media type (see
        :class:`~convscope.frontends.serve._present.Kept`)."""
        return self.kept.download(rid, fmt)

    def explain(self, model: str, method: str, image: Image.Image, **request: Any) -> dict[str, Any]:
        """Run ``method`` on ``image`` and return the pictures and numbers the page shows:
        :meth:`show` of the view ``"single"`` (``request``: its keywords, ``topk`` 5 by default)."""
        return self.show(model, image, view="single", method=method, **request)

    def grid(self, model: str, image: Image.Image, *, kind: str, method: str,
             **request: Any) -> dict[str, Any]:
        """A class grid (``kind="classes"``) or a method grid (``kind="methods"``): :meth:`show`
        of that view (``request``: its keywords, ``topk`` 4 by default).

        Raises:
            InputError: ``kind`` is not a grid, or as for :meth:`show`.
        """
        if kind not in VIEWS[1:]:
            raise InputError(f"unknown grid {kind!r}; use one of {', '.join(VIEWS[1:])}")
        return self.show(model, image, view=kind, method=method, **request)

    def show(
        self,
        model: str,
        image: Image.Image,
        *,
        view: str,
        method: str,
        methods: Sequence[str] = (),
        target: str | None = None,
        layer: str | None = None,
        fast: bool = False,
        topk: int | None = None,
        options: dict[str, Any] | None = None,
        sample: int | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Run one view of ``image`` (one of :data:`~convscope.frontends.serve._present.VIEWS`) and return the
        pictures and numbers the page shows, kept for the downloads.

        * ``"single"``: ``method`` explains ``target``; the payload adds the options it ran with,
          whether its fast settings applied and whether it is heavy.
        * ``"classes"``: the ``topk`` (at most 10) most probable classes explained by ``method``,
          on one colour scale (:func:`~convscope.methods.grids.explain_classes`).
        * ``"methods"``: each of ``methods`` for ``target``, each on its own scale
          (:func:`~convscope.methods.grids.explain_methods`).

        ``options`` apply to ``method``; ``fast`` to every method. The model work is one job of
        :attr:`jobs`, in the heavy lane if any method :func:`is_heavy`, that must finish by
        ``deadline`` (:func:`time.monotonic` time; default: :attr:`Limits.timeout_s` from now);
        ``sample`` (the sample ``image`` is, if it is one) goes into the view state.

        Raises:
            InputError: an unknown view, model, method, layer or target; no methods or too many;
                an option the registry refuses.
            QueueFull, TimedOut: see :meth:`JobQueue.run`.
        """
        from convscope.methods.explain import explain
        from convscope.methods.grids import explain_classes, explain_methods

        lm = self.model(model)
        info = get_method(method)
        extra: dict[str, Any] = {}
        # a stated topk is checked, never clamped (single: up to 20 probabilities; classes: 10 panels)
        topk = check_topk(topk, len(lm.class_names) or 1, *((10, 4) if view == "classes" else (20, 5)))
        if view in ("single", "classes"):
            infos = [info]
            if layer and not info.needs_layer:
                raise InputError(f"method {info.name!r} does not use a layer; drop layer")
            lay = self.layer(model, layer) if info.needs_layer else None
            opts = self.options(info, fast, options)
            if view == "single":
                tgt = parse_target(target)
                work = lambda: explain(lm, image, method=info.name, target=tgt, layer=lay, **opts)  # noqa: E731
                payload = lambda e: explanation_payload(e, info, topk)  # noqa: E731
                extra = {"options": plain(opts), "fast": bool(fast and info.fast_options),
                         "heavy": is_heavy(info)}
            else:
                work = lambda: explain_classes(lm, image, topk=topk, method=info.name, layer=lay, **opts)  # noqa: E731
                payload = lambda g: grid_payload(g, 10)  # noqa: E731
        elif view == "methods":
            names = list(dict.fromkeys(methods))
            if not 1 <= len(names) <= MAX_GRID_METHODS:
                raise InputError(f"a method grid takes 1 to {MAX_GRID_METHODS} methods, got {len(names)}")
            infos = [get_method(m) for m in names]
            lay = self.layer(model, layer) if any(i.needs_layer for i in infos) else None
            per = {i.name: self.options(i, fast, options if i.name == info.name else None) for i in infos}
            tgt = parse_target(target)
            work = lambda: explain_methods(lm, image, names, target=tgt, layer=lay,  # noqa: E731
                                           options={m: o for m, o in per.items() if o})
            payload = lambda g: grid_payload(g, 10)  # noqa: E731
        else:
            raise InputError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
        result, times = self._run(lm, work, heavy=any(is_heavy(i) for i in infos), deadline=deadline)
        state = View(lm.name, info.name, view=view, sample=sample, target=str(target or ""),
                     layer=lay or "", fast=bool(fast), options=dict(options or {}),
                     methods=tuple(methods) if view == "methods" else (), topk=int(topk))
        kept = self.kept.add(result, state, _image_record(image, sample))
        return {**payload(result), **times, **extra, **kept}

    def activations(self, model: str, layer: str, image: Image.Image, *, n: int = 16,
                    vis: bool = False, deadline: float | None = None) -> dict[str, Any]:
        """The ``n`` most active channels of ``layer`` for ``image``, each as a small picture;
        with ``vis``, also each channel's feature visualisation (seconds per layer on a CPU).

        One forward pass, a cheap job; the visualisations are a heavy one. Both must finish by
        ``deadline`` (see :meth:`explain`)."""
        from convscope.core.hooks import capture
        from convscope.methods.explain import prepare_inputs

        lm = self.model(model)
        lay = self.layer(model, layer)
        if lay is None:
            raise InputError("pick a layer")
        if not any(d["name"] == lay and d["spatial"] for d in self.layers[model]):
            raise InputError(f"layer {lay!r} of {model} has no (C, H, W) map to browse; pick another")
        check_values(n=(n, ints(1, self.limits.max_channels)))  # refused, never clamped
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
            img = upscale(colorize(m, signed=False, cmap="viridis"), 96)
            cells.append({"channel": int(c), "mean": float(means[c]), "src": data_uri(img)})
        pictures = None
        if vis and featvis_available():
            pictures = self._channel_vis(model, lay, [cell["channel"] for cell in cells], until)
            for cell in cells:
                cell["vis"] = pictures.get(cell["channel"])
        return {"model": model, "layer": lay, "channels": int(a.shape[0]),
                "shape": list(a.shape), "input": data_uri(upscale(disp[0], 128)), "top": cells,
                "featvis": pictures is not None}

    def _channel_vis(self, model: str, layer: str, channels: list[int],
                     deadline: float) -> dict[int, str]:
        """Channel visualisations from :mod:`convscope.methods.featvis`, cached per (model, layer,
        channel)."""
        from convscope.frontends.serve import _featvis

        with self._vis_lock:
            found = {c: self._vis_cache[(model, layer, c)] for c in channels
                     if (model, layer, c) in self._vis_cache}
        missing = [c for c in channels if c not in found]
        if missing:
            lm = self.model(model)

            def job(expired: Callable[[], bool]) -> dict[int, str]:
                with stop_after(lm.model, expired):
                    return _featvis.channel_pictures(lm, layer, missing)

            pictures = self.jobs.run(job, heavy=True, deadline=deadline)
            found.update(pictures)
            with self._vis_lock:  # a bounded cache: 512 small pictures at most
                for c, src in pictures.items():
                    self._vis_cache[(model, layer, c)] = src
                while len(self._vis_cache) > 512:
                    self._vis_cache.popitem(last=False)
        return found



def _image_record(image: Image.Image, sample: int | None) -> dict[str, Any]:
    """Which image a result is of: the sample index, or an upload's size."""
    return {"sample": sample, "upload": sample is None, "width": image.width, "height": image.height}
