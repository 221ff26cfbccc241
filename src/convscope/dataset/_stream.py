"""Streaming a data source through a model in batches, with DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..hooks import state_guard
from ..models import LoadedModel, load_model
from .receptive import layer_extractor
from .sources import DataSource, as_source


def resolve(model: Any, data: Any, limit: int | None = None) -> tuple[LoadedModel, DataSource]:
    lm = load_model(model)
    src = as_source(data, lm.preprocessing, limit=limit)
    return lm, src


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


def stream_layer(
    lm: LoadedModel,
    source: DataSource,
    layer: str,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: Any = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(activation (b, C, h, w) or (b, D), labels (b,), indices (b,))`` batch by batch."""
    net = lm.model
    dev = model_device(net, device)
    f = layer_extractor(net, layer)
    with state_guard(net), torch.no_grad():
        for x, y, idx in loader(source, batch_size, num_workers):
            yield f(x.to(dev, non_blocking=True)), y, idx
