"""What the web app's answers hold: the method catalogue, the view state of a URL, result payloads
and the downloads of a result, without HTTP and without model work.

* :func:`method_catalogue`: each registered method with its option specs
  (:attr:`~convscope.methods.registry.MethodInfo.option_specs`), which the page builds its form from.
* :func:`parse_options`: the ``options`` field of a request (a JSON object) as keyword options;
  the registry's checks (:func:`~convscope.methods.registry.check_method_options`) judge the values.
* :class:`View`: the view a request asks for (model, sample, method, target, layer, options,
  grid mode); :meth:`View.query` is the canonical URL query the page keeps in its address, and
  the same fields are what ``/api/explain`` and ``/api/grid`` take.
* :func:`explanation_payload`, :func:`grid_payload`: the pictures and numbers the page shows.
* :func:`download`: PNG (the labelled figure), NPY (the raw maps, ``np.save``) or JSON
  (``to_dict()`` with the model's preprocessing and assumptions, and the view) of a result.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.io import json_bytes, npy_bytes
from convscope.core.results import Explanation, blend, colorize, data_uri, sign_legend, upscale
from convscope.core.targets import top_classes
from convscope.methods.registry import MethodInfo, list_methods

__all__ = ["FORMATS", "Kept", "NotFound", "View", "download", "explanation_payload", "grid_payload",
           "method_catalogue", "parse_options", "plain"]

#: Download formats: extension -> media type.
FORMATS = {"png": "image/png", "npy": "application/octet-stream", "json": "application/json"}

#: Grid modes of a view: one result, several methods side by side, several classes on one scale.
VIEWS = ("single", "methods", "classes")


def parse_options(text: str | None) -> dict[str, Any]:
    """The ``options`` field, a JSON object such as ``{"steps": 16}``; empty means none.

    Raises:
        InputError: not JSON, or not an object with string keys.
    """
    if text is None or not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InputError(f"options must be a JSON object like {{\"steps\": 16}}, got {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"options must be a JSON object like {{\"steps\": 16}}, got {text[:60]!r}")
    return value


def plain(v: Any) -> Any:
    """``v`` as JSON-able data (tensors of one number as that number, others by ``repr``)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return repr(v)


def _method_entry(m: MethodInfo, heavy: bool) -> dict[str, Any]:
    return {
        "name": m.name,
        "family": m.family,
        "needs_layer": m.needs_layer,
        "signed": m.signed,
        "summary": m.summary,
        "caveats": m.caveats,
        "reference": m.reference,
        "fast_options": {k: plain(v) for k, v in m.fast_options.items()},
        "heavy": heavy,
        "options": [s.to_dict() for s in m.option_specs],
    }


def method_catalogue() -> list[dict[str, Any]]:
    """Every registered method with its notes, fast settings and option specs, in registry order."""
    from convscope.frontends.serve.jobs import is_heavy

    return [_method_entry(m, is_heavy(m)) for m in list_methods()]


@dataclass(frozen=True)
class View:
    """What the page shows; :meth:`query` is its URL query (only the fields that differ from the
    defaults, options as compact JSON with sorted keys)."""

    model: str
    method: str
    view: str = "single"
    sample: int | None = None
    target: str = ""
    layer: str = ""
    fast: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    topk: int = 5

    def query(self) -> str:
        defaults = View(self.model, self.method)
        fields: list[tuple[str, str]] = []
        for k, v in asdict(self).items():
            if v == getattr(defaults, k) and k not in ("model", "method"):
                continue
            if k == "options":
                v = json.dumps(v, sort_keys=True, separators=(",", ":"))
            elif k == "methods":
                v = ",".join(v)
            elif k == "fast":
                v = "true"
            fields.append((k, str(v)))
        return urlencode(fields)


def _p(e: Explanation, c: int | None) -> float | None:
    return None if e.probabilities is None or c is None else float(e.probabilities[0, c])


def _top(e: Explanation, topk: int) -> list[dict[str, Any]]:
    if e.probabilities is None:
        return []
    top = top_classes(e.probabilities[0], e.class_names, topk)  # checked at the edge (Engine.show)
    return [{"index": i, "name": name, "p": p} for i, name, p in top]


_COLORBARS: dict[bool, str] = {}


def colorbar(signed: bool) -> str:
    """The colour bar of signed or unsigned maps, as a data URI (256 x 10 pixels)."""
    if signed not in _COLORBARS:
        ramp = np.linspace(-1 if signed else 0, 1, 256)[None].repeat(10, 0)
        rgb = (colorize(ramp, signed=signed) * 255).astype(np.uint8)
        _COLORBARS[signed] = data_uri(Image.fromarray(rgb))
    return _COLORBARS[signed]


def _target_fields(e: Explanation) -> dict[str, Any]:
    t = e.targets[0]
    c = None if e.contrast is None else e.contrast[0]
    return {"target": e.target_name(0), "target_index": t, "target_p": _p(e, t),
            "contrast_index": c, "contrast_name": None if c is None else e.class_names[c],
            "contrast_p": _p(e, c), "legend": sign_legend(e)}


def explanation_payload(e: Explanation, info: MethodInfo, topk: int) -> dict[str, Any]:
    """The pictures (data URIs, 256 px) and numbers of a one-image explanation."""
    h = e.heatmap(0)
    raw = e.map[0]
    return {
        "model": e.model_name,
        "model_info": plain(e.model_info),
        "method": info.name,
        "family": info.family,
        "signed": e.signed,
        "summary": info.summary,
        "caveats": info.caveats,
        "reference": info.reference,
        **_target_fields(e),
        "layer": e.layer,
        "diagnostics": {k: plain(v) for k, v in e.diagnostics.items()},
        "unreliable": e.unreliable_because(0),
        "probabilities": _top(e, topk),
        "map_min": float(raw.min()),
        "map_max": float(raw.max()),
        "input": data_uri(upscale(e.images[0], 256)),
        "overlay": data_uri(e.overlay(0, min_side=256)),
        "heatmap": data_uri(upscale(colorize(h, signed=e.signed), 256)),
        "colorbar": colorbar(e.signed),
        "pixelated": min(e.images.shape[1:3]) < 128,
    }


def grid_payload(grid: Any, topk: int) -> dict[str, Any]:
    """The input and one overlay per panel of a :class:`~convscope.methods.grids.Grid`, with labels."""
    first = grid.panels[0]
    panels = []
    for i, e in enumerate(grid.panels):
        h = grid.heatmap(i)
        panels.append({
            "method": e.method,
            "layer": e.layer,
            "signed": e.signed,
            **_target_fields(e),
            "overlay": data_uri(upscale(blend(e.images[0], h, signed=e.signed), 192)),
            "colorbar": colorbar(e.signed),
            "map_min": float(e.map[0].min()),
            "map_max": float(e.map[0].max()),
        })
    return {
        "kind": grid.kind,
        "model": first.model_name,
        "model_info": plain(first.model_info),
        "scale": grid.scale,
        "probabilities": _top(first, topk),
        "input": data_uri(upscale(first.images[0], 192)),
        "pixelated": min(first.images.shape[1:3]) < 128,
        "panels": panels,
    }


def download(result: Any, fmt: str, record: dict[str, Any]) -> bytes:
    """The bytes of ``result`` (an Explanation or a Grid) in format ``fmt`` (:data:`FORMATS`).

    ``record`` (the view, the image) is added to the JSON under ``"request"``.
    """
    from convscope.core.figure import figure_png

    if fmt == "png":
        return figure_png(result.figure())
    if fmt == "npy":
        maps = result.map if isinstance(result, Explanation) else torch.cat([e.map for e in result.panels])
        return npy_bytes(maps)
    d = result.to_dict(include_map=False) if isinstance(result, Explanation) else result.to_dict()
    return json_bytes({**d, "request": record})


class NotFound(InputError):
    """The request names a result that is not kept (any more), or an unknown format (HTTP 404)."""


class Kept:
    """The last ``size`` results (Explanations or Grids), each under a random id, for downloads.

    Args:
        size: how many results are kept; the oldest goes first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, result: Any, view: View, image: dict[str, Any]) -> dict[str, Any]:
        """Keep ``result``; the answer's ``id``, ``state`` (:meth:`View.query`) and ``downloads``."""
        rid = secrets.token_urlsafe(12)
        record = {"view": {**asdict(view), "methods": list(view.methods)}, "state": view.query(),
                  "image": image}
        with self._lock:
            self._items[rid] = (result, record)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return {"id": rid, "state": view.query(),
                "downloads": {f: f"/api/result/{rid}.{f}" for f in FORMATS}}

    def download(self, rid: str, fmt: str) -> tuple[bytes, str]:
        """The bytes of result ``rid`` in format ``fmt`` (:func:`download`) and their media type.

        Raises:
            NotFound: no such result (any more), or a format not in :data:`FORMATS`.
        """
        if fmt not in FORMATS:
            raise NotFound(f"no download format {fmt!r}; use one of {', '.join(FORMATS)}")
        with self._lock:
            kept = self._items.get(rid)
        if kept is None:
            raise NotFound(f"no result {rid!r} is kept (the last {self.size} are); explain again")
        return download(kept[0], fmt, kept[1]), FORMATS[fmt]
