"""Report sections from :mod:`convscope.methods.featvis`: class visualisations, a channel gallery and
the first-layer filters (``convscope report --class-vis / --channels LAYER / --filters``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from convscope.frontends.report import Figure, Report

__all__ = ["section_builders"]


def _figures(vis: Any, pixelated: bool = True) -> list[Figure]:
    return [Report.figure(vis.image(i, min_side=168), title=vis.titles[i], pixelated=pixelated)
            for i in range(len(vis))]


def section_builders(
    *,
    class_vis: Sequence[str] | None = None,
    channels: str | None = None,
    filters: bool = False,
    seed: int = 0,
    n_channels: int = 16,
) -> list[Callable[[Report, Any], None]]:
    """Callables ``f(report, loaded_model)`` for :func:`~convscope.frontends.report.explain_report`.

    Args:
        class_vis: ``None`` for no section; ``[]`` for the model's classes (at most 16); else
            class indices or names.
        channels: a layer name for a gallery of its first ``n_channels`` channels.
        filters: add the first convolution's filters.
    """
    out: list[Callable[[Report, Any], None]] = []
    if class_vis is not None:
        def add_classes(rep: Report, lm: Any) -> None:
            from convscope.methods.featvis import visualize_class

            classes = [int(c) if str(c).lstrip("-").isdigit() else c for c in class_vis] or None
            vis = visualize_class(lm, classes, seed=seed)
            sec = rep.section("Class visualisations",
                              "Images optimised to maximise each class's logit (Simonyan et al. "
                              "2014): what the model has come to associate with the class.")
            sec.rows.append(_figures(vis))
        out.append(add_classes)
    if channels:
        def add_channels(rep: Report, lm: Any) -> None:
            from convscope.methods.featvis import visualize_layer

            vis = visualize_layer(lm, channels, range(n_channels), seed=seed)
            sec = rep.section(f"Channels of layer {channels}",
                              "Images optimised to maximise the mean activation of each channel.")
            sec.rows.append(_figures(vis))
        out.append(add_channels)
    if filters:
        def add_filters(rep: Report, lm: Any) -> None:
            from convscope.methods.featvis import filters as first_filters

            vis = first_filters(lm)
            sec = rep.section("First-layer filters",
                              "The weights of the first convolution drawn as images (mid-grey is "
                              "zero).")
            sec.rows.append(_figures(vis))
        out.append(add_filters)
    return out
