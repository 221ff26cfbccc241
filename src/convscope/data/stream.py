"""Streaming a data source through a model in batches, with DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from convscope.core.device import check_device
from convscope.core.hooks import resolve_layers, state_guard
from convscope.data.base import DataSource
from convscope.data.sources import as_source
from convscope.models import LoadedModel, load_model
from convscope.models.forward import layer_extractor


def model_device(net: nn.Module, device: Any = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def loader(source: DataSource, batch_size: int, num_workers: int = 0, sampler: Any = None) -> DataLoader:
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(prefetch_factor=4, persistent_workers=False)
    if sampler is not None:
        return DataLoader(source, batch_sampler=sampler, num_workers=num_workers, **kw)
    return DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers, **kw)


@dataclass(frozen=True)
class Streaming:
    """How a data-set view reads the data through the model: the keyword options that
    :func:`~convscope.methods.dataset.layer_features`, :func:`~convscope.methods.dataset.top_activations`,
    :func:`~convscope.methods.dataset.nearest_neighbors` and :func:`~convscope.methods.dataset.embed` share.

    Attributes:
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes reading images.
        limit: use only the first ``limit`` images.
        device: run the model here (default: where its parameters are).
    """

    batch_size: int = 64
    num_workers: int = 0
    limit: int | None = None
    device: Any = None

    def __post_init__(self) -> None:
        check_device(self.device)

    def open(self, model: Any, data: Any, layer: str) -> tuple[LoadedModel, DataSource, str]:
        """The loaded model, the data source (its first ``limit`` images) and ``layer``'s full name."""
        lm = load_model(model)
        src = as_source(data, lm.preprocessing, limit=self.limit)
        (name,) = resolve_layers(lm.model, layer)[:1]
        return lm, src, name

    def activations(
        self, lm: LoadedModel, source: DataSource, layer: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(activation (b, C, h, w) or (b, D), labels (b,), indices (b,))`` batch by batch."""
        net = lm.model
        dev = model_device(net, self.device)
        f = layer_extractor(net, layer)
        with state_guard(net), torch.no_grad():
            for x, y, idx in loader(source, self.batch_size, self.num_workers):
                yield f(x.to(dev, non_blocking=True)), y, idx
