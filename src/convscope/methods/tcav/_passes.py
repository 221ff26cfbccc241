"""The model passes of a concept test: layer activations of a set, and directional derivatives.

Both stream a set through the model in batches (the dataset engine's loader), so memory is set by
the batch size, not by the number of images:

* :func:`set_statistics`: for every layer, the sum of the flattened activations over the set (what
  the mean-difference vector needs) and, only for a trained classifier, the activations
  themselves. The pass stops at the deepest requested layer (no gradients).
* :func:`directional_derivatives`: for every class image and layer, the gradient of the class
  logit with respect to that layer's output (captured by :func:`convscope.core.hooks.capture`, weights
  frozen, so no parameter gradient is computed), projected on every concept activation vector at
  once: ``grad . v`` for each ``v``; the gradients themselves are never kept.

Results are shared, inside ``with convscope.shared_work():``, per model weights, layers and set
content (:func:`convscope.methods.attribution._shared.shared`), so a second test on the same model reuses
the random sets' activations and the class's projections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import capture, state_guard
from convscope.data.stream import loader, model_device
from convscope.methods.attribution._shared import shared
from convscope.methods.tcav._sets import ImageSet
from convscope.models.outputs import class_scores

__all__ = ["SetStats", "directional_derivatives", "set_statistics"]

_NO_INPUT = torch.zeros(0)  # the memo keys these values by set digest, not by an input batch


@dataclass(frozen=True)
class SetStats:
    """What a concept test keeps of one set at one layer.

    Attributes:
        count: number of images.
        total: (D,) float64 sum of the flattened activations.
        rows: (count, D) float32 activations, kept only for a trained classifier, else ``None``.
        shape: the activation's shape for one image (C, H, W).
    """

    count: int
    total: torch.Tensor
    rows: torch.Tensor | None
    shape: tuple[int, ...] = ()

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


def _model_error(exc: Exception, what: str) -> InputError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return InputError(f"the model cannot take the {what} ({type(exc).__name__}: {first[:200]}); give images "
                      "of the size and channels it expects, or state its preprocessing")


def _check_spatial(name: str, act: torch.Tensor) -> None:
    if act.ndim != 4:
        raise InputError(f"layer {name!r} has no spatial activations (its output is "
                         f"{tuple(act.shape)}, not (B, C, H, W)); pick a convolutional layer")


def memory_format(net: nn.Module, channels_last: bool) -> torch.memory_format | None:
    """``torch.channels_last`` for a network with 4-D weights when asked, else ``None`` (as given)."""
    if channels_last and any(p.dim() == 4 for p in net.parameters()):
        return torch.channels_last
    return None


def set_statistics(net: nn.Module, images: ImageSet, layers: Sequence[str], *, keep_rows: bool,
                   batch_size: int, num_workers: int = 0, device: object = None,
                   channels_last: bool = False) -> dict[str, SetStats]:
    """Per layer, the sum (and with ``keep_rows`` the rows) of the set's flattened activations.
    ``channels_last``: run the passes in that memory format (same values up to float rounding)."""
    fmt = memory_format(net, channels_last)

    def compute() -> dict[str, SetStats]:
        dev = model_device(net, device)
        totals: dict[str, torch.Tensor] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        count = 0
        with state_guard(net, memory_format=fmt), capture(net, list(layers), clone=False) as cap, \
                torch.no_grad():
            for x, _, _ in loader(images.source, batch_size, num_workers):
                cap.reset()
                x = x.to(dev) if fmt is None else x.to(dev).contiguous(memory_format=fmt)
                try:
                    cap.run(x, stop_after=list(layers))
                except (RuntimeError, ValueError, TypeError) as exc:
                    raise _model_error(exc, f"images of {images.name!r}") from None
                for n in layers:
                    a = cap.activation(n)
                    _check_spatial(n, a)
                    shapes[n] = tuple(a.shape[1:])
                    flat = a.detach().reshape(a.shape[0], -1)
                    s = flat.double().sum(0)
                    totals[n] = s if n not in totals else totals[n] + s
                    if keep_rows:
                        rows[n].append(flat.float().cpu())
                count += int(x.shape[0])
        return {n: SetStats(count, totals[n].cpu(), torch.cat(rows[n]) if keep_rows else None, shapes[n])
                for n in layers}

    parts = ("concept_set_stats", tuple(layers), bool(keep_rows), images.key, fmt is not None)
    also = [] if keep_rows else [("concept_set_stats", tuple(layers), True, images.key, fmt is not None)]
    return shared(parts, net, _NO_INPUT, compute, also=also)


def directional_derivatives(
    net: nn.Module, images: ImageSet, target: int, vectors: dict[str, torch.Tensor], *,
    batch_size: int, num_workers: int = 0, device: object = None, channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """Per layer, ``(N, K)``: the gradient of logit ``target`` at the layer's output for each of the
    set's N images, dotted with each of the layer's K vectors (``vectors[layer]``: (K, D)).

    Shape:
        vectors: layer -> (K, D) float32 with D the layer's flattened size. returns layer -> (N, K).
    """
    layers = list(vectors)
    fmt = memory_format(net, channels_last)

    def compute() -> dict[str, torch.Tensor]:
        dev = model_device(net, device)
        vs = {n: v.to(dev, torch.float32) for n, v in vectors.items()}
        out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
        with state_guard(net, memory_format=fmt), capture(net, layers) as cap:
            for x, _, _ in loader(images.source, batch_size, num_workers):
                cap.reset()
                x = x.to(dev) if fmt is None else x.to(dev).contiguous(memory_format=fmt)
                x = x.requires_grad_(True)  # a fresh batch: the caller's tensors stay as they are
                with torch.enable_grad():
                    try:
                        scores = class_scores(cap.run(x))
                    except (RuntimeError, ValueError, TypeError) as exc:
                        raise _model_error(exc, "class images") from None
                    acts = [cap.activation(n) for n in layers]
                    for n, a in zip(layers, acts, strict=True):
                        _check_spatial(n, a)
                    grads = torch.autograd.grad(scores[:, target].sum(), acts, allow_unused=True)
                for n, a, g in zip(layers, acts, grads, strict=True):
                    if g is None:  # zeros would read as "no different from random": a false all-clear
                        raise InputError(f"the class logit does not depend on layer {n!r} (it is off the "
                                         "path to the output); pick a layer the output is computed from")
                    if g[0].numel() != vs[n].shape[1]:
                        raise InputError(f"at layer {n!r} the class images give activations of "
                                         f"{tuple(a.shape[1:])}, unlike the concept's; give class images "
                                         "of the same size as the concept images")
                    out[n].append((g.reshape(g.shape[0], -1).float() @ vs[n].T).cpu())
        return {n: torch.cat(out[n]) for n in layers}

    h = hashlib.sha256()
    for n in layers:
        h.update(n.encode())
        h.update(vectors[n].detach().float().cpu().contiguous().numpy().tobytes())
    parts = ("concept_directional", images.key, int(target), h.hexdigest(), fmt is not None)
    return shared(parts, net, _NO_INPUT, compute)
