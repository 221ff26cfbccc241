"""Self-contained HTML documents from a packaged Jinja2 template: the report's container.

A :class:`Report` is a list of sections; each holds text, tables, probability bars and figures
(:class:`~convscope.core.result.Figure`) whose images are embedded as ``data:`` URIs, so the file
works offline and alone. Every result adds itself to one (``Report.add``); the full explanation
report that fills one from a model is :func:`convscope.frontends.report.explain_report`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from convscope.core.errors import InputError
from convscope.core.io import atomic_write
from convscope.core.result import Figure, data_uri, render_template
from convscope.core.version import __version__

__all__ = ["Figure", "Report", "Section", "model_rows"]


@dataclass
class Section:
    """A titled block: a note, optional table, then rows of figures."""

    title: str
    note: str = ""
    table: list[list[Any]] | None = None
    table_header: list[str] | None = None
    rows: list[list[Figure]] = field(default_factory=list)
    row_labels: list[str] = field(default_factory=list)
    row_notes: list[str] = field(default_factory=list)  # a line under each row label (optional)
    html_blocks: list[str] = field(default_factory=list)
    lead: Figure | None = None  # shown first, next to the chart (e.g. the input image)
    chart: list[tuple[str, float]] | None = None  # (label, value in [0, 1]) horizontal bars
    chart_title: str = ""


class Report:
    """An HTML report: ``Report(title).section(...)``, then ``.write(path)``."""

    def __init__(self, title: str, intro: str = "") -> None:
        self.title = title
        self.intro = intro
        self.sections: list[Section] = []

    def section(self, title: str, note: str = "", **kw: Any) -> Section:
        s = Section(title=title, note=note, **kw)
        self.sections.append(s)
        return s

    @staticmethod
    def figure(img: Image.Image, caption: str = "", title: str = "", **kw: Any) -> Figure:
        return Figure(src=data_uri(img), caption=caption, title=title, **kw)

    def add(self, result: Any, title: str | None = None, note: str = "") -> Section:
        """Append a section showing ``result`` and return it.

        Args:
            result: any convscope result (:class:`convscope.core.result.Result`: an explanation,
                visualisation, synthesis or adversarial result, grid, data-set view; an audit adds
                its own sections), or an object with ``to_html()`` (e.g. a text explanation),
                whose HTML block is embedded.
            title: the section title (default: the result's own title).
            note: a line under the title.

        Raises:
            InputError: ``result`` is neither.
        """
        from convscope.core.result import Result

        if isinstance(result, Result):
            return result.add_to_report(self, title=title, note=note)
        if callable(getattr(result, "to_html", None)):
            sec = self.section(title or type(result).__name__, note)
            sec.html_blocks.append(result.to_html())
            return sec
        raise InputError(f"cannot add a {type(result).__name__} to a report: pass a convscope result "
                         "(explain, visualize, attack, ...) or an object with to_html()")

    def render(self) -> str:
        return render_template("report.html.j2", report=self, version=__version__,
                               created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                               colorbars=_colorbars())

    def write(self, path: str | os.PathLike) -> Path:
        html = self.render().encode("utf-8")
        return atomic_write(path, lambda fh: fh.write(html))

    def _repr_html_(self) -> str:
        """The report inline in a notebook: the self-contained page in an iframe (``srcdoc``).

        The iframe keeps the report's styles away from the notebook's and scrolls on its own; it is
        sandboxed (the report has no scripts) and its lower edge can be dragged to make it taller.
        """
        from html import escape

        return (f'<iframe srcdoc="{escape(self.render(), quote=True)}" title="{escape(self.title)}" '
                'sandbox="" style="width:100%;height:720px;border:1px solid #d5dae3;border-radius:6px;'
                'resize:vertical"></iframe>')


def _colorbars() -> dict[str, str]:
    import numpy as np

    from convscope.core.results import colorize

    ramp = np.linspace(0, 1, 256)[None].repeat(12, 0)
    out = {}
    for kind, signed in (("unsigned", False), ("signed", True)):
        v = ramp * 2 - 1 if signed else ramp
        rgb = (colorize(v, signed=signed) * 255).astype("uint8")
        out[kind] = data_uri(Image.fromarray(rgb))
    return out


def model_rows(lm: Any) -> list[list[str]]:
    """Table rows describing a loaded model (or its ``info()`` dict, as results record it):
    weights, preprocessing, classes, layer, assumptions."""
    info = lm if isinstance(lm, dict) else lm.info()
    names = info["class_names"]
    rows = [
        ["model", str(info["model"])],
        ["weights", str(info["weights"])],
        ["preprocessing", str(info["preprocessing_text"])],
        ["classes", f"{info['num_classes']}: " + ", ".join(map(str, names[:10]))
         + (" ..." if info["num_classes"] > 10 else "")],
        ["default layer", str(info["default_layer"])],
    ]
    rows += [["assumed", a] for a in info["assumed"]]
    return rows
