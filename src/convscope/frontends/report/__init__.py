"""Self-contained HTML reports: the explanation report of a model (:func:`explain_report`).

The document container (:class:`Report`, :class:`Section`, :class:`Figure`) lives in
:mod:`convscope.core.document`, below every method, so any result can add itself to a report.
"""

from __future__ import annotations

from convscope.core.document import Figure, Report, Section
from convscope.frontends.report.build import explain_report, top_k

__all__ = ["Figure", "Report", "Section", "bars_of", "explain_report"]

bars_of = top_k  # the old name of the top-k bars
