"""Results as tables (CSV, JSON) and plots (matplotlib PNG), written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.io import atomic_write

__all__ = ["format_table", "plot_curves", "plot_sanity", "png_image", "table_bytes", "write_png",
           "write_table"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _clean(v.item())
    return v


def table_bytes(rows: Sequence[Mapping[str, Any]], fmt: str) -> bytes:
    """``rows`` (dicts sharing keys) as ``"csv"`` or ``"json"`` bytes."""
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    if fmt == "json":
        return (json.dumps(rows, indent=2) + "\n").encode()
    if fmt == "csv":
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
        return buf.getvalue().encode()
    raise InputError(f"unknown table format {fmt!r}; use csv or json")


def table_format(path: str | os.PathLike) -> str:
    """``"csv"`` or ``"json"`` from a file name, or an error naming the choices."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in ("csv", "json"):
        raise InputError(f"{path}: give a .csv or .json file name")
    return ext


def write_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``rows`` to ``path`` (.csv or .json) atomically."""
    data = table_bytes(rows, table_format(path))
    return atomic_write(path, lambda fh: fh.write(data))


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 2) -> str:
    """A fixed-width text table of ``columns`` for the terminal."""
    def cell(v: Any) -> str:
        v = _clean(v)
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def png_image(data: bytes) -> Image.Image:
    """PNG bytes as a PIL image (for :class:`convscope.frontends.report.Report`)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def write_png(data: bytes, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def plot_curves(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], *,
                ylabel: str = "target probability", xlabel: str = "share of pixels") -> bytes:
    """PNG of mean curves: one panel per key of ``panels``, one line per label in it.

    Args:
        panels: title -> {label: (fractions, mean scores)}.
    """
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    fig = Figure(figsize=(4.2 * n + 1.8, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels.items(), strict=False):
        for (label, (fx, fy)), col in zip(lines.items(), _colors(len(lines)), strict=True):
            dashed = label.startswith("(")
            ax.plot(fx, fy, label=label, color="black" if dashed else col,
                    linestyle=":" if "random" in label else ("--" if dashed else "-"), linewidth=1.4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    return _legend_png(fig, axes)


def plot_sanity(panels: Mapping[str, Sequence[Any]], threshold: float | None = None) -> bytes:
    """PNG of cascading-randomisation curves (Adebayo et al. Fig. 2 style).

    Args:
        panels: title -> list of :class:`~convscope.methods.evaluation.sanity.SanityResult`; x axis: the
            layers randomised so far (output side first), y axis: mean rank correlation.
    """
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    fig = Figure(figsize=(4.6 * n + 1.8, 3.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    names = list(dict.fromkeys(r.method for results in panels.values() for r in results))
    colour = dict(zip(names, _colors(len(names)), strict=True))
    for ax, (title, results) in zip(axes, panels.items(), strict=False):
        for res in results:
            y = [1.0] + [float(v) for v in res.spearman.mean(1)]
            ok = res.mode != "cascading" or res.passed  # the verdict exists for the cascade only
            ax.plot(range(len(y)), y, marker="o" if ok else "x", markersize=3,
                    color=colour[res.method], linestyle="-" if ok else "--",
                    linewidth=1.2 if ok else 2.0, label=res.method)
        if results:
            stages = ["trained"] + list(results[0].stages)
            ax.set_xticks(range(len(stages)))
            ax.set_xticklabels(stages, rotation=45, ha="right", fontsize=8)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(title + " (dashed: fails the check)", fontsize=10)
        ax.set_ylabel("rank correlation with trained map")
        ax.set_xlabel("cascading randomisation (output side first)")
        ax.set_ylim(-0.3, 1.05)
        ax.grid(alpha=0.3)
    return _legend_png(fig, axes)


def _legend_png(fig: Any, axes: Any) -> bytes:
    """The figure as PNG, with the first panel's legend outside on the right (if it has one)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return _png(fig)


def _colors(n: int) -> list[Any]:
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    cols = [matplotlib.colormaps["tab20"](i) for i in range(20)]
    cols += [matplotlib.colormaps["tab20b"](i) for i in range(20)]
    return [cols[i % len(cols)] for i in range(n)]
