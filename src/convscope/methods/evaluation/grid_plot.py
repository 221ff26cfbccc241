"""The picture of a :class:`~convscope.methods.evaluation.grid.MetricTable`: one coloured table.

Rows are methods, columns the metrics grouped by family, then one column per family rank. Each cell
shows the mean and its 95 % interval; its colour is the method's rank within the metric (green:
best, red: worst), so the direction of each metric (marked with an arrow) is already applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.methods.evaluation.catalogue import METRICS
from convscope.methods.evaluation.tables import _png

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
    rows = list(table.metrics) + [f"{f} rank" for f in fam]
    n, k = len(rows), len(table.methods)
    worst = max(k, 2)
    colour = np.full((n, k), np.nan)
    text = [["" for _ in table.methods] for _ in rows]
    for j, me in enumerate(table.methods):
        for i, m in enumerate(table.metrics):
            mean, (lo, hi) = table.mean(me, m), table.ci[me][m]
            if np.isfinite(mean):
                colour[i, j] = (ranks[m][me] - 1) / (worst - 1)
                text[i][j] = f"{_fmt(mean)}  [{_fmt(lo)}, {_fmt(hi)}]"
            else:
                text[i][j] = "–"
        for i, f in enumerate(fam, start=len(table.metrics)):
            if np.isfinite(fam[f][me]):
                colour[i, j] = (fam[f][me] - 1) / (worst - 1)
                text[i][j] = f"mean rank {fam[f][me]:.1f}"
            else:
                text[i][j] = "–"
    fig, ax = plt.subplots(figsize=(2.3 * k + 3.2, 0.3 * n + 1.4), dpi=100)
    # a muted range of the map, so that the text stays readable on every cell
    ax.imshow(np.ma.masked_invalid(colour), cmap="RdYlGn_r", vmin=-0.35, vmax=1.35, aspect="auto")
    for i in range(n):
        for j in range(k):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7,
                    weight="bold" if i >= len(table.metrics) else "normal")
    labels = [f"{m} ({METRICS[m].family}) {'↑' if METRICS[m].higher_is_better else '↓'}"
              for m in table.metrics]
    ax.set_yticks(range(n), labels + rows[len(table.metrics):], fontsize=7)
    ax.set_xticks(range(k), [me[:28] for me in table.methods], fontsize=8)
    ax.xaxis.tick_top()
    ax.axhline(len(table.metrics) - 0.5, color="black", lw=1.5)
    ax.set_title(f"Which method to trust: mean [95% CI] over {table.n_images} images; colour: rank "
                 "within the row (green best); ↑/↓ higher/lower is better", fontsize=8, pad=22)
    fig.tight_layout()
    return _png(fig)
