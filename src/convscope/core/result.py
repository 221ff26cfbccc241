"""The one protocol every convscope result follows: save by extension, plain data, HTML, notebooks.

A result type (``Explanation``, ``Visualization``, ``AdversarialResult``, ``SynthesisResult``,
``Grid``, ``TopActivations``, ``Neighbors``, ``Embedding``, ``Audit``, ``TextExplanation``)
subclasses :class:`Result` and implements only what is its own:

* ``save_formats``: the file extensions ``save`` accepts, e.g. ``(".png", ".npy", ".json")``;
* ``to_dict()``: JSON-ready metadata (what ``.json`` holds);
* ``png(*args, **kwargs)``: its picture as PNG bytes (what ``.png`` holds and notebooks show);
* ``npy_array()``: the array ``.npy`` holds (float32), if it saves ``.npy``;
* ``html_figures()``: the pictures and captions of its small HTML block (default: ``png()``
  with :meth:`Result.html_caption`), which are also what ``Report.add(result)`` shows;
* optionally ``report_title()`` or ``add_to_report()`` (the audit adds its own sections).

:class:`Result` then gives ``save(path, *args, **kwargs)`` (one dispatch on the extension,
written atomically by :func:`convscope.core.io.save_by_extension`; ``*args, **kwargs`` go to
``png``), ``to_html()`` (rendered from the packaged Jinja2 template ``result.html.j2``),
``_repr_png_`` and ``_repr_html_`` for notebooks.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from convscope.core.io import json_bytes, npy_bytes, save_by_extension

__all__ = ["Deferred", "Figure", "HtmlFigure", "LazyField", "Result", "batch_slice", "data_uri",
           "deferred_value",
           "jsonable", "png_bytes", "png_width", "render_template"]


class Deferred:
    """A value computed on first use: ``func(*tensors)``, for work only a picture needs.

    Pickled as its value (computed then). The tensors must not change before the
    value is computed: their version counters are recorded and checked (a change is a bug in
    convscope, reported as such rather than showing a picture of different data).
    """

    def __init__(self, func: Any, *tensors: torch.Tensor) -> None:
        self.func = func
        self.tensors = tensors
        self.versions = tuple(t._version for t in tensors)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return (_same, (self(),))  # pickled as its value (unpickled tensors restart their versions)

    def __call__(self) -> Any:
        if tuple(t._version for t in self.tensors) != self.versions:
            raise RuntimeError("convscope bug: an input changed in place before its display image was made")
        return self.func(*self.tensors)


def _same(value: Any) -> Any:
    return value


class LazyField:
    """A dataclass field (frozen or not) that accepts a :class:`Deferred` and computes it on first
    read, keeping the value; any other value is stored as it is. Declared with a type annotation
    and ``= LazyField()``; the field has no default."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(self.name)  # no class-level default (dataclasses read this)
        value = obj.__dict__[self.name]
        if isinstance(value, Deferred):
            value = value()
            obj.__dict__[self.name] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


def deferred_value(obj: Any, name: str) -> Any:
    """The stored value of :class:`LazyField` ``name`` of ``obj``, not computed if deferred (to
    hand it on to another result)."""
    return obj.__dict__[name]


def batch_slice(i: int, n: int, what: str = "sample") -> slice:
    """The slice that takes item ``i`` (negative counts from the end) of a batch of ``n`` as a batch
    of one; ``IndexError`` naming ``what`` when out of range."""
    if not -n <= i < n:
        raise IndexError(f"{what} {i} out of range for {n}")
    i %= n
    return slice(i, i + 1)


def png_bytes(img: Image.Image) -> bytes:
    """A PIL image as PNG file bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(img: Image.Image | bytes) -> str:
    """A ``data:image/png;base64,...`` URI of a PIL image or PNG bytes, for self-contained HTML."""
    data = img if isinstance(img, bytes) else png_bytes(img)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def jsonable(v: Any) -> Any:
    """``v`` as JSON-ready data: tensors and arrays as nested lists, numpy scalars as numbers,
    containers recursively, anything else by its ``repr``."""
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("convscope.core", "templates"),
                       autoescape=select_autoescape(["html", "j2"]))


def render_template(name: str, **context: Any) -> str:
    """Render the packaged template ``convscope/core/templates/<name>`` (HTML-escaped)."""
    return _environment().get_template(name).render(**context)


def png_width(png: bytes, cap: int = 1150) -> int:
    """The pixel width of a PNG (from its header), at most ``cap``: the display width of a grid or
    figure shown at its natural size in a report, not as a thumbnail."""
    return min(cap, int.from_bytes(png[16:20], "big"))


@dataclass(frozen=True)
class HtmlFigure:
    """One figure of a result's HTML block: its pictures (data URIs) side by side, a caption.

    Attributes:
        sources: the pictures' ``data:`` URIs.
        caption: the text under them.
        width: display width of each picture in CSS pixels (``None``: natural size).
        pixelated: draw with hard pixel edges (small images shown enlarged).
        warning: why the result is unreliable by its own diagnostics (shown as a badge and a line).
    """

    sources: tuple[str, ...]
    caption: str = ""
    width: int | None = None
    pixelated: bool = False
    warning: str = ""


class Result:
    """Base of the result types: ``save`` by extension, ``to_html``, notebook reprs.

    See the module docstring for what a subclass implements.
    """

    #: The extensions ``save`` accepts, in the order an error message lists them.
    save_formats: ClassVar[tuple[str, ...]] = (".png", ".json")
    #: Indentation of the ``.json`` file (``None``: one line, for large coordinate lists).
    json_indent: ClassVar[int | None] = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata (what ``save("x.json")`` writes)."""
        raise NotImplementedError

    def png(self, *args: Any, **kwargs: Any) -> bytes:
        """The result's picture as PNG bytes (what ``save("x.png")`` writes)."""
        raise NotImplementedError

    def npy_array(self) -> Any:
        """The array ``save("x.npy")`` writes (a tensor or numpy array; saved as float32)."""
        raise NotImplementedError

    def html_caption(self) -> str:
        """The caption of the default HTML block: the result's ``repr``."""
        return repr(self)

    def html_figures(self) -> list[HtmlFigure]:
        """The figures of :meth:`to_html` (default: the PNG picture with :meth:`html_caption`)."""
        return [HtmlFigure((data_uri(self.png()),), self.html_caption())]

    def save(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
        """Write ``path`` by its extension (one of ``save_formats``), atomically.

        ``.png``: :meth:`png` (given ``*args, **kwargs``); ``.npy``: :meth:`npy_array` as float32;
        ``.json``: :meth:`json_dict` (:meth:`to_dict`); ``.html``: :meth:`to_html`. Another extension raises
        :class:`~convscope.core.errors.InputError` naming the accepted ones and writes nothing.
        """
        writers = {
            ".png": lambda: self.png(*args, **kwargs),
            ".npy": lambda: npy_bytes(self.npy_array()),
            ".json": lambda: json_bytes(self.json_dict(Path(path).parent), indent=self.json_indent),
            ".html": lambda: self.to_html().encode("utf-8"),
        }
        return save_by_extension(path, {ext: writers[ext] for ext in self.save_formats})

    def json_dict(self, folder: Path) -> dict[str, Any]:
        """What ``save("x.json")`` writes into ``folder``: :meth:`to_dict` (a result that names
        files, such as the audit, gives their paths relative to ``folder``)."""
        return self.to_dict()

    def report_title(self) -> str:
        """The title of the section :meth:`add_to_report` adds (default: the type's name)."""
        return type(self).__name__

    def add_to_report(self, report: Any, *, title: str | None = None, note: str = "") -> Any:
        """Append a section with :meth:`html_figures` to ``report`` (a
        :class:`convscope.core.document.Report`; what ``report.add(result)`` calls) and return it."""
        sec = report.section(title or self.report_title(), note)
        sec.rows.append([Figure(src=src, caption=f.caption if k == len(f.sources) - 1 else "",
                                pixelated=f.pixelated, width=f.width,
                                warning=f.warning if k == len(f.sources) - 1 else "")
                         for f in self.html_figures() for k, src in enumerate(f.sources)])
        sec.row_labels.append("")
        return sec

    def to_html(self) -> str:
        """A small self-contained HTML block: the pictures with their captions (for notebooks)."""
        return render_template("result.html.j2", figures=self.html_figures())

    # --- notebooks ----------------------------------------------------------------------------
    def _repr_png_(self) -> bytes | None:
        return self.png() if ".png" in self.save_formats else None

    def _repr_html_(self) -> str:
        return self.to_html()


@dataclass
class Figure:
    """One image with a caption (``src`` is a data URI)."""

    src: str
    caption: str = ""
    title: str = ""
    bars: list[tuple[str, float]] = field(default_factory=list)
    colorbar: str | None = None  # "signed" | "unsigned" | None
    note: str = ""  # one line on what the picture shows (e.g. a method's summary and caveats)
    kind: str = "figure"  # "figure" | "input" | "method" | "skipped" (no image; caption says why)
    family: str = ""  # the method family, shown as a small tag
    pixelated: bool = True  # draw with hard pixel edges (small images shown enlarged)
    width: int | None = None  # display width in CSS pixels for wide pictures (grids, figures)
    warning: str = ""  # why the result is unreliable (its diagnostics' verdict): a badge and a line
