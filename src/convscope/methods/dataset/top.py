"""Maximally activating images per channel, with the receptive-field patch behind each activation.

"Run many images, record one channel, show the patches": every image of the data set goes
through the model once; for each channel of ``layer`` the image's score is the channel's largest
value over all positions, and the position where it occurs. A running top-k per channel is
merged batch by batch (a stable sort over the k kept entries and the new batch, so ties keep the
earlier image), so memory holds the k best per channel and one batch of activations, never the
activations of the whole data set.

The patch of an activation is the exact receptive field of that unit
(:mod:`convscope.methods.dataset.receptive`), cut from the image as the model saw it; parts of the field
that fall outside the image (padding) are shown gray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError, MethodError
from convscope.core.result import Result
from convscope.core.results import png_bytes
from convscope.core.validate import option_group, shows_options
from convscope.data.stream import Streaming
from convscope.methods.dataset._grid import PAD_GRAY, draw_box, grid
from convscope.methods.dataset._view import LayerView
from convscope.methods.dataset.receptive import ReceptiveField, receptive_field, rf_box

__all__ = ["TopActivations", "top_activations"]


class RunningTopK:
    """The k largest (value, image, position) per channel, updated batch by batch.

    Shape:
        update(act (b, C, h, w) or (b, C), indices (b,)); values/indices (C, k'), positions (C, k', 2).
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise InputError(f"k must be a positive integer, got {k}")
        self.k = k
        self.values: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.feature_size: tuple[int, int] = (1, 1)

    def update(self, act: torch.Tensor, indices: torch.Tensor) -> None:
        act = act.detach().float()
        if act.ndim == 2:
            act = act[:, :, None, None]
        if act.ndim != 4:
            raise MethodError(f"layer output must be (B, C, H, W) or (B, C), got {tuple(act.shape)}")
        b, c, h, w = act.shape
        self.feature_size = (h, w)
        v, a = act.reshape(b, c, h * w).max(dim=2)  # (b, C)
        self.add(v, indices, torch.stack([a // w, a % w], dim=-1))

    def add(self, v: torch.Tensor, indices: torch.Tensor, pos: torch.Tensor) -> None:
        """Merge a batch's per-channel peaks: values (b, C), image indices (b,), positions (b, C, 2)."""
        b, c = v.shape
        idx = indices.to(torch.long).view(b, 1).expand(b, c)
        new_v, new_i, new_p = v.float().t().cpu(), idx.t().cpu(), pos.long().transpose(0, 1).cpu()
        if self.values is not None:
            assert self.indices is not None and self.positions is not None
            new_v = torch.cat([self.values, new_v], 1)
            new_i = torch.cat([self.indices, new_i], 1)
            new_p = torch.cat([self.positions, new_p], 1)
        order = torch.sort(new_v, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = torch.gather(new_v, 1, order)
        self.indices = torch.gather(new_i, 1, order)
        self.positions = torch.gather(new_p, 1, order[..., None].expand(-1, -1, 2))


@dataclass(frozen=True, repr=False)
class TopActivations(LayerView, Result):
    """The k most activating images of each channel of a layer.

    Attributes:
        values: (C, k) the channel's largest activation in each image, best first.
        indices: (C, k) index of the image in ``source``.
        positions: (C, k, 2) (row, col) of that activation in the layer's feature map.
        feature_size: (h, w) of the feature map.
        receptive_field: the units' exact receptive field, or ``None`` (whole image) when the
            layer has none (global pooling, linear layers).
        layer, source, model_name: what it is of (:class:`~convscope.methods.dataset._view.LayerView`).
    """

    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    feature_size: tuple[int, int]
    receptive_field: ReceptiveField | None

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    def _summary(self) -> list[tuple[str, str | None]]:
        return [
            ("channels", str(self.channels)), ("k", str(int(self.values.shape[1]))),
            ("feature_size", str(tuple(self.feature_size))),
            ("receptive_field", None if self.receptive_field is None
             else "{}x{} px".format(*self.receptive_field.size)),
        ]

    def box(self, channel: int, rank: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the receptive field behind entry ``rank``, clipped to the image."""
        h, w = self.source.preprocessing.size
        if self.receptive_field is None:
            return 0, 0, h, w
        i, j = (int(v) for v in self.positions[channel, rank])
        return rf_box(self.receptive_field, i, j, h, w)

    def patch(self, channel: int, rank: int) -> np.ndarray:
        """The receptive-field patch (S, S, 3), the out-of-image part gray.

        The whole image when the layer has no receptive field.
        """
        img = self.source.pixels(int(self.indices[channel, rank]))
        if self.receptive_field is None:
            return img
        h, w = img.shape[:2]
        i, j = (int(v) for v in self.positions[channel, rank])
        t, le, b, r = self.receptive_field.box(i, j)
        out = np.full((b - t, r - le, 3), PAD_GRAY, dtype=img.dtype)
        ct, cl, cb, cr = max(t, 0), max(le, 0), min(b, h), min(r, w)
        if cb > ct and cr > cl:
            out[ct - t : cb - t, cl - le : cr - le] = img[ct:cb, cl:cr]
        return out

    def patches(self, channel: int) -> list[np.ndarray]:
        return [self.patch(channel, r) for r in range(self.values.shape[1])]

    def grid(
        self,
        channels: Sequence[int] | None = None,
        *,
        style: str = "patch",
        cell: int = 64,
        max_channels: int = 16,
    ) -> Image.Image:
        """A grid, one row per channel (default: the first ``max_channels`` live channels).

        Each row shows the patches (``style="patch"``) or the whole images with the receptive
        field outlined (``style="image"``), best first, with the activation values.
        """
        if channels is None:  # the first channels that fire at all (dead channels show nothing)
            live = [c for c in range(self.channels) if float(self.values[c, 0]) > 0] or list(
                range(self.channels)
            )
            chans = live[:max_channels]
        else:
            chans = [int(c) for c in channels]
        for c in chans:
            if not 0 <= c < self.channels:
                raise InputError(f"channel {c} out of range: layer {self.layer} has {self.channels} channels")
        rows, caps = [], []
        for c in chans:
            if style == "patch":
                row = self.patches(c)
            elif style == "image":
                row = [
                    draw_box(self.source.pixels(int(self.indices[c, r])), self.box(c, r))
                    for r in range(self.values.shape[1])
                ]
            else:
                raise InputError(f"unknown grid style {style!r}; use patch or image")
            rows.append(row)
            caps.append([f"{float(v):.2f}" for v in self.values[c]])
        rf = self.receptive_field
        what = f"{rf.size[0]}x{rf.size[1]} px receptive field" if rf else "whole image"
        title = f"{self.model_name} {self.layer}: top {self.values.shape[1]} per channel ({what})"
        return grid(rows, cell=cell, row_labels=[f"ch {c}" for c in chans], captions=caps, title=title)

    def to_dict(self) -> dict[str, Any]:
        rf = self.receptive_field
        k = self.values.shape[1]
        return {
            **self._about(),
            "feature_size": list(self.feature_size),
            "receptive_field": None
            if rf is None
            else {"jump": list(rf.jump), "start": list(rf.start), "size": list(rf.size)},
            "channels": [
                {
                    "channel": c,
                    "values": self.values[c].tolist(),
                    "indices": self.indices[c].tolist(),
                    "positions": self.positions[c].tolist(),
                    "boxes": [list(self.box(c, r)) for r in range(k)],
                    "labels": [self.source.label(int(i)) for i in self.indices[c]],
                }
                for c in range(self.channels)
            ],
        }

    def png(self, channels: Sequence[int] | None = None, *, style: str = "patch") -> bytes:
        """:meth:`grid` as PNG bytes (``save(path, channels, style=)``: ``.png`` this, ``.json``
        the values, images, positions and boxes; atomic)."""
        return png_bytes(self.grid(channels, style=style))


@shows_options(Streaming)
def top_activations(
    model: Any,
    data: Any,
    layer: str,
    *,
    k: int = 8,
    **stream: Any,
) -> TopActivations:
    """The ``k`` most activating images of every channel of ``layer`` over a data set.

    Args:
        model: a model spec, ``nn.Module`` or loaded model.
        data: ``"digits"``, an image folder, a torch ``Dataset`` or a source (see :func:`as_source`).
        layer: dotted layer name.
        k: images per channel.
        **stream: how the data is read, the fields of :class:`~convscope.data.stream.Streaming`:
            ``batch_size`` (images per forward pass), ``num_workers`` (DataLoader worker processes
            reading images), ``limit`` (use only the first ``limit`` images), ``device``.

    Returns:
        A :class:`TopActivations` (memory: k entries per channel, independent of the data set size).
    """
    st = option_group(Streaming, "top_activations", stream)
    lm, src, name = st.open(model, data, layer)
    top = RunningTopK(k)
    for act, _y, idx in st.activations(lm, src, name):
        top.update(act, idx)
    if top.values is None:
        raise InputError("the data set is empty")
    rf: ReceptiveField | None
    try:
        size = src.preprocessing.size
        rf = receptive_field(lm.model, name, (int(size[0]), int(size[1])))
    except MethodError:  # global pooling, linear layers, untraceable models: show whole images
        rf = None
    assert top.indices is not None and top.positions is not None
    return TopActivations(top.values, top.indices, top.positions, top.feature_size, rf, layer=name,
                          source=src, model_name=lm.name)
