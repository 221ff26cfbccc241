"""The picture of a :class:`~convscope.evaluation.grid.MetricTable`: one coloured table.

Rows are methods, columns the metrics grouped by family, then one column per family rank. Each cell
shows the mean and its 95 % interval; its colour is the method's rank within the metric (green:
best, red: worst), so the direction of each metric (marked with an arrow) is already applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .catalogue import METRICS
from .tables import _png

__all__ = ["plot_table"]


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def plot_table(table: Any) -> bytes:
    """PNG bytes of the table (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks, fam = table.ranks(), table.family_ranks()
    cols = list(table.metrics) + [f"{f} rank" for f in fam]
    n, k = len(table.methods), len(cols)
    worst = max(n, 2)
    colour = np.full((n, k), np.nan)
    text = [["" for _ in cols] for _ in table.methods]
    for i, me in enumerate(table.methods):
        for j, m in enumerate(table.metrics):
            mean, (lo, hi) = table.mean(me, m), table.ci[me][m]
            colour[i, j] = (ranks[m][me] - 1) / (worst - 1) if np.isfinite(mean) else np.nan
            text[i][j] = f"{_fmt(mean)}\n[{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(mean) else "–"
        for j, f in enumerate(fam, start=len(table.metrics)):
            colour[i, j] = (fam[f][me] - 1) / (worst - 1)
            text[i][j] = f"{fam[f][me]:.1f}"
    fig, ax = plt.subplots(figsize=(1.25 * k + 2.2, 0.62 * n + 2.4), dpi=100)
    ax.imshow(np.ma.masked_invalid(colour), cmap="RdYlGn_r", vmin=0, vmax=1, aspect="auto")
    for i in range(n):
        for j in range(k):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    heads = [f"{m}\n{'↑' if METRICS[m].higher_is_better else '↓'} {METRICS[m].family[:6]}"
             for m in table.metrics]
    ax.set_xticks(range(k), heads + [c.replace(" ", "\n") for c in cols[len(table.metrics):]], rotation=60,
                  ha="right", fontsize=7)
    ax.set_yticks(range(n), table.methods, fontsize=8)
    ax.axvline(len(table.metrics) - 0.5, color="black", lw=1.5)
    ax.set_title(f"Which method to trust: {table.n_images} images (colour: rank, green best; "
                 "↑/↓ higher/lower is better)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
