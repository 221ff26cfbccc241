"""Pooled layer features of a data set, and nearest neighbours of a query image among them.

A layer's feature vector for an image is its activation averaged (``pool="avg"``) or maximised
(``pool="max"``) over positions: (B, C, H, W) -> (B, C); (B, D) outputs are used as they are.
Distances: ``"cosine"`` (1 - cosine similarity) or ``"l2"`` (Euclidean). Ties are broken by the
lower image index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.hooks import state_guard
from convscope.core.result import Result
from convscope.core.results import png_bytes
from convscope.core.validate import option_group, shows_options
from convscope.data.base import DataSource
from convscope.data.stream import Streaming, model_device
from convscope.methods.dataset._grid import grid
from convscope.methods.dataset._view import LayerView
from convscope.models import LoadedModel
from convscope.models.forward import layer_extractor

__all__ = ["Features", "Neighbors", "layer_features", "nearest_neighbors", "pool_features"]


def pool_features(act: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """(B, C, H, W) -> (B, C) by average or max over positions; (B, D) unchanged; float32."""
    act = act.detach().float()
    if act.ndim == 2:
        return act
    if act.ndim != 4:
        return act.flatten(1)
    if pool == "avg":
        return act.mean((2, 3))
    if pool == "max":
        return act.amax((2, 3))
    raise InputError(f"unknown pooling {pool!r}; use avg or max")


@dataclass(frozen=True, repr=False)
class Features(LayerView):
    """Pooled features (N, D) of a data set at ``layer``, with labels (N,) and the source."""

    features: torch.Tensor
    labels: np.ndarray

    def _summary(self) -> list[tuple[str, str | None]]:
        return [("features", str(tuple(self.features.shape)))]


@dataclass(frozen=True)
class Pooling(Streaming):
    """How a layer's pooled features are made: how the data is read (:class:`Streaming`) and how
    each activation becomes one vector. The keyword options of :func:`layer_features`,
    :func:`nearest_neighbors` and :func:`~convscope.methods.dataset.embed`.

    Attributes:
        pool: ``"avg"`` or ``"max"`` over positions (:func:`pool_features`).
    """

    pool: str = "avg"


@shows_options(Pooling)
def layer_features(
    model: Any,
    data: Any,
    layer: str,
    **pooling: Any,
) -> Features:
    """Pooled features of every image of ``data`` at ``layer`` (streamed batch by batch).

    Args:
        **pooling: the fields of :class:`Pooling`: ``pool`` (``"avg"`` or ``"max"`` over positions)
            and how the data is read (``batch_size``, ``num_workers``, ``limit``, ``device``).
    """
    st = option_group(Pooling, "layer_features", pooling)
    return pooled(st, *st.open(model, data, layer))


def pooled(st: Pooling, lm: LoadedModel, src: DataSource, name: str) -> Features:
    """:func:`layer_features` of the opened ``lm``, ``src`` and layer ``name``, made as ``st`` says."""
    feats, labels = [], []
    for act, y, _ in st.activations(lm, src, name):
        feats.append(pool_features(act, st.pool).cpu())
        labels.append(y)
    if not feats:
        raise InputError("the data set is empty")
    return Features(torch.cat(feats), torch.cat(labels).numpy().astype(np.int64), layer=name, source=src,
                    model_name=lm.name)


def distances(q: torch.Tensor, feats: torch.Tensor, metric: str) -> torch.Tensor:
    """(D,) query vs (N, D) features -> (N,) distances (float64)."""
    q = q.double().view(1, -1)
    f = feats.double()
    if metric == "cosine":
        qn = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
        fn = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return 1.0 - (fn @ qn.t())[:, 0]
    if metric == "l2":
        return (f - q).pow(2).sum(1).sqrt()
    raise InputError(f"unknown metric {metric!r}; use cosine or l2")


@dataclass(frozen=True, repr=False)
class Neighbors(LayerView, Result):
    """The k nearest images to a query in a layer's feature space.

    Attributes:
        indices: (k,) indices into ``source``, nearest first.
        distances: (k,) their distances.
        query_pixels: (H, W, 3) the query as the model saw it.
        query_index: the query's index in the source, if it came from it (then it is excluded).
    """

    metric: str
    indices: np.ndarray
    distances: np.ndarray
    query_pixels: np.ndarray
    query_index: int | None

    def _summary(self) -> list[tuple[str, str | None]]:
        pairs = zip(self.indices[:4], self.distances[:4], strict=True)
        near = [f"{int(i)} ({float(d):.3g})" for i, d in pairs]
        if len(self.indices) > 4:
            near.append(f"... {len(self.indices) - 4} more")
        return [("metric", repr(self.metric)), ("nearest", "[" + ", ".join(near) + "]"),
                ("query_index", None if self.query_index is None else str(self.query_index))]

    def grid(self, *, cell: int = 72) -> Image.Image:
        """The query (outlined red) followed by its neighbours, with labels and distances."""
        names = self.source.class_names
        imgs = [self.query_pixels] + [self.source.pixels(int(i)) for i in self.indices]
        caps = ["query"]
        for i, d in zip(self.indices, self.distances, strict=True):
            lab = self.source.label(int(i))
            name = names[lab] if 0 <= lab < len(names) else ("" if lab < 0 else str(lab))
            caps.append(f"{name} {float(d):.3f}".strip())
        title = f"{self.model_name} {self.layer}: {len(self.indices)} nearest ({self.metric})"
        return grid([imgs], cell=cell, captions=[caps], title=title, highlight_first=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._about(),
            "metric": self.metric,
            "query_index": self.query_index,
            "indices": self.indices.tolist(),
            "distances": self.distances.tolist(),
            "labels": [self.source.label(int(i)) for i in self.indices],
        }

    def png(self) -> bytes:
        """:meth:`grid` as PNG bytes (``save``: ``.png`` this or ``.json``; atomic)."""
        return png_bytes(self.grid())


@shows_options(Pooling)
def nearest_neighbors(
    model: Any,
    data: Any,
    query: Any,
    layer: str,
    *,
    k: int = 8,
    metric: str = "cosine",
    features: Features | None = None,
    **pooling: Any,
) -> Neighbors:
    """The ``k`` images of ``data`` nearest to ``query`` in ``layer``'s pooled feature space.

    Args:
        query: an index into the data set (that image is then left out of the answer), or an
            image (path, PIL image, array, or a (C, H, W) model-space tensor).
        metric: ``"cosine"`` or ``"l2"``.
        features: precomputed :func:`layer_features` of ``data`` (reused across queries).
        **pooling: how the features are made (``pool``, ``batch_size``, ...), as for
            :func:`layer_features`.
    """
    if metric not in ("cosine", "l2"):
        raise InputError(f"unknown metric {metric!r}; use cosine or l2")
    st = option_group(Pooling, "nearest_neighbors", pooling)
    lm, src, name = st.open(model, data, layer)
    if features is None:
        features = pooled(st, lm, src, name)
    src = features.source
    qidx: int | None = None
    if isinstance(query, (int, np.integer)):
        qidx = int(query)
        if not 0 <= qidx < len(src):
            raise InputError(f"query index {qidx} is out of range: this data set has {len(src)} images, "
                             f"so it must be 0..{len(src) - 1}")
        qfeat = features.features[qidx]
        qpix = src.pixels(qidx)
    else:
        from convscope.methods.explain import prepare_inputs

        x, disp, _ = prepare_inputs(query, lm.preprocessing, generic=lm.any_channels)
        net = lm.model
        f = layer_extractor(net, name)
        with state_guard(net), torch.no_grad():
            qfeat = pool_features(f(x[:1].to(model_device(net, st.device))), st.pool)[0].cpu()
        qpix = disp[0]
    d = distances(qfeat, features.features, metric).numpy()
    if qidx is not None:
        d = d.copy()
        d[qidx] = np.inf
    kk = min(k, len(d) - (qidx is not None))
    order = np.lexsort((np.arange(len(d)), d))[:kk]
    return Neighbors(metric, order, d[order], qpix, qidx, layer=name, source=src, model_name=lm.name)
