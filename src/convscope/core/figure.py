"""Matplotlib figures made without pyplot, for the results' ``figure()`` methods.

Nothing here touches pyplot's global state: the caller's backend stays as it is (a notebook's
inline backend keeps working) and no figure is left open in pyplot's list. Notebooks still show
the figures inline, through :meth:`InlineFigure._repr_png_`, even when pyplot was never imported;
where ``%matplotlib inline`` registered its own formatter, IPython uses that one.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.figure import Figure

__all__ = ["InlineFigure", "figure_png"]


def figure_png(fig: Figure, *, dpi: float = 100, **savefig: Any) -> bytes:
    """The figure as PNG bytes, cropped to its content (``bbox_inches="tight"`` unless overridden)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **{"bbox_inches": "tight", **savefig})
    return buf.getvalue()


class InlineFigure(Figure):
    """A :class:`matplotlib.figure.Figure` that IPython displays as a PNG without pyplot.

    Save it with ``fig.savefig(path)``; it is not managed by pyplot, so ``plt.show()`` does not
    see it.
    """

    def _repr_png_(self) -> bytes:
        return figure_png(self)
