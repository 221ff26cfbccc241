"""``ConceptAtlas``: the result of :func:`convscope.methods.crp.concept_atlas`, following the result protocol.

Its picture is a grid, one row per channel: on the left the ``n`` receptive-field patches of the
data set where the channel carries the most relevance (relevance maximisation), on the right the
``n`` where it is most active (activation maximisation), each captioned with its value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.result import HtmlFigure, Result, data_uri, jsonable, png_bytes, png_width
from convscope.methods.dataset._grid import grid
from convscope.methods.dataset.top import TopActivations

__all__ = ["ConceptAtlas"]

BY = ("relevance", "activation")


@dataclass(frozen=True)
class ConceptAtlas(Result):
    """The reference patches of every channel of a layer over a data set.

    Attributes:
        relevance: the top ``n`` images per channel by peak relevance, with positions (a
            :class:`~convscope.methods.dataset.TopActivations` whose values are relevances).
        activation: the same by peak activation.
        composite: the LRP composite of the relevances.
        target: which decision each image's relevance is for: ``"pred"``, ``"label"`` or a class.
        n_images: images in the data set.
        path: the store the atlas was read from.
        model_sha256: the fingerprint of the model's weights (a reuse checks it).
        notes: what makes the atlas less reliable (each also raised as a warning by the caller).
    """

    relevance: TopActivations
    activation: TopActivations
    composite: str
    target: Any
    n_images: int
    path: str = ""
    model_sha256: str = ""
    notes: tuple[str, ...] = ()

    save_formats: ClassVar[tuple[str, ...]] = (".png", ".json", ".html")

    @property
    def layer(self) -> str:
        return self.relevance.layer

    @property
    def model_name(self) -> str:
        return self.relevance.model_name

    @property
    def channels(self) -> int:
        return self.relevance.channels

    @property
    def n(self) -> int:
        return int(self.relevance.values.shape[1])

    def __repr__(self) -> str:
        return (f"ConceptAtlas({self.model_name} @ {self.layer}: {self.channels} channels x top {self.n} "
                f"of {self.n_images} images, LRP {self.composite}, target {self.target})")

    def view(self, by: str) -> TopActivations:
        if by not in BY:
            raise InputError(f"unknown ranking {by!r}; use relevance or activation")
        return self.relevance if by == "relevance" else self.activation

    def references(self, channel: int, by: str = "relevance", n: int | None = None) -> np.ndarray:
        """(n, S, S, 3) the receptive-field patches of ``channel``, best first (S: the field's size,
        the out-of-image part gray; whole images when the layer has no receptive field)."""
        view = self.view(by)
        if not 0 <= channel < self.channels:
            raise InputError(f"channel {channel} out of range: layer {self.layer} has {self.channels} "
                             "channels")
        k = self.n if n is None else min(int(n), self.n)
        return np.stack([view.patch(channel, r) for r in range(k)])

    def default_channels(self, max_channels: int = 16) -> list[int]:
        """The ``max_channels`` channels with the highest peak relevance, in channel order."""
        best = self.relevance.values[:, 0]
        order = sorted(range(self.channels), key=lambda c: (-float(best[c]), c))[:max_channels]
        return sorted(order)

    def grid(self, channels: Sequence[int] | None = None, *, max_channels: int = 16,
             cell: int = 48) -> Image.Image:
        """One row per channel: relevance patches, a gap, activation patches (see the module docstring).

        Args:
            channels: the channels to show (default: :meth:`default_channels`).
            max_channels: how many channels the default shows.
            cell: pixels per patch.
        """
        chans = self.default_channels(max_channels) if channels is None else [int(c) for c in channels]
        if not chans:
            raise InputError("channels= is empty; name at least one channel")
        gap = np.ones((4, 4, 3))
        rows, caps = [], []
        for c in chans:
            rel, act = self.references(c, "relevance"), self.references(c, "activation")
            rows.append([*rel, gap, *act])
            caps.append([f"{float(v):.2g}" for v in self.relevance.values[c]] + [""]
                        + [f"{float(v):.2g}" for v in self.activation.values[c]])
        rf = self.relevance.receptive_field
        what = f"{rf.size[0]}x{rf.size[1]} px receptive field" if rf else "whole images"
        shown = "" if channels is not None or len(chans) == self.channels else (
            f", {len(chans)} of {self.channels} channels (most relevant)")
        title = (f"{self.model_name} {self.layer}: left top {self.n} by relevance ({self.composite}, target "
                 f"{self.target}), right top {self.n} by activation; {what}, {self.n_images} images{shown}")
        return grid(rows, cell=cell, row_labels=[f"ch {c}" for c in chans], captions=caps, title=title)

    def png(self, channels: Sequence[int] | None = None, **kwargs: Any) -> bytes:
        """:meth:`grid` as PNG bytes."""
        return png_bytes(self.grid(channels, **kwargs))

    def to_dict(self) -> dict[str, Any]:
        def entries(view: TopActivations, c: int) -> list[dict[str, Any]]:
            return [{"image": int(view.indices[c, r]), "position": view.positions[c, r].tolist(),
                     "value": float(view.values[c, r]), "box": list(view.box(c, r))}
                    for r in range(self.n)]

        rf = self.relevance.receptive_field
        return {
            "kind": "concept_atlas", "model": self.model_name, "layer": self.layer,
            "channels": self.channels, "n": self.n, "n_images": self.n_images, "composite": self.composite,
            "target": jsonable(self.target),
            "store": self.path, "model_sha256": self.model_sha256,
            "feature_size": list(self.relevance.feature_size),
            "receptive_field": None if rf is None else {"jump": list(rf.jump), "start": list(rf.start),
                                                        "size": list(rf.size)},
            "per_channel": [{"channel": c, "relevance": entries(self.relevance, c),
                             "activation": entries(self.activation, c)} for c in range(self.channels)],
            "notes": list(self.notes),
        }

    def html_caption(self) -> str:
        warn = "".join(f" WARNING: {n}" for n in self.notes)
        return (f"Concept atlas of {self.layer} ({self.channels} channels) over {self.n_images} images: "
                f"for each channel the {self.n} patches with the most LRP relevance ({self.composite}) and "
                f"the {self.n} most activating ones.{warn}")

    def html_figures(self) -> list[HtmlFigure]:
        png = self.png()
        return [HtmlFigure((data_uri(png),), self.html_caption(), width=png_width(png),
                           warning="; ".join(self.notes))]

    def report_title(self) -> str:
        return f"Concept atlas of {self.layer}"
