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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.hooks import capture, state_guard
from convscope.data.sources import Subset
from convscope.data.stream import loader, model_device
from convscope.methods.attribution._shared import shared
from convscope.methods.dataset import DataSource
from convscope.methods.tcav._disk import DiskCache
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


def _groups(sets: Sequence[ImageSet]) -> list[tuple[DataSource, list[tuple[int, np.ndarray]]]]:
    """The sets grouped by the source their images come from: ``(base, [(set index, indices into
    base)])``. Subsets of one source (random sets drawn from one pool) form one group, so an image
    drawn into several sets passes through the model once."""
    groups: dict[int, tuple[DataSource, list[tuple[int, np.ndarray]]]] = {}
    for k, s in enumerate(sets):
        src = s.source
        base, idx = (src.base, np.asarray(src.indices)) if isinstance(src, Subset) and src.relabel is None \
            else (src, np.arange(len(src)))
        groups.setdefault(id(base), (base, []))[1].append((k, idx))
    return list(groups.values())


def _pack(value: list[dict[str, SetStats]]) -> list[dict[str, Any]]:
    return [{n: {"count": v.count, "total": v.total, "rows": v.rows, "shape": list(v.shape)}
             for n, v in d.items()} for d in value]


def _unpack(value: list[dict[str, Any]]) -> list[dict[str, SetStats]]:
    return [{n: SetStats(int(v["count"]), v["total"], v["rows"], tuple(v["shape"])) for n, v in d.items()}
            for d in value]


def layer_activations(net: nn.Module, x: torch.Tensor, layers: Sequence[str], *, device: object = None,
                      channels_last: bool = False, what: str = "images",
                      cap: Any = None) -> dict[str, torch.Tensor]:
    """One batch's activations at ``layers`` (layer -> (b, C, H, W)), under ``torch.no_grad``,
    the forward pass stopped after the deepest layer. ``cap``: a capture already open on ``net``
    (the local pass keeps one for all its batches); else one is opened for this batch (a Ray actor's
    chunk). Not ``inference_mode``: a model that caches a tensor in forward would keep an inference
    tensor, and its later class pass (with autograd) would fail.

    Raises:
        InputError: the model cannot take ``x`` (named ``what``), or a layer gives no (B, C, H, W).
    """
    if cap is None:
        fmt = memory_format(net, channels_last)
        with state_guard(net, memory_format=fmt), capture(net, list(layers)) as c:
            return layer_activations(net, x, layers, device=device, channels_last=channels_last, what=what,
                                     cap=c)
    fmt = memory_format(net, channels_last)
    x = x.to(model_device(net, device))
    x = x if fmt is None else x.contiguous(memory_format=fmt)
    cap.reset()
    with torch.no_grad():
        try:
            cap.run(x, stop_after=list(layers))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise _model_error(exc, what) from None
        out = {}
        for n in layers:
            a = cap.activation(n)
            _check_spatial(n, a)
            out[n] = a
        return out


def _local_pass(net: nn.Module, src: DataSource, layers: Sequence[str],
                consume: Callable[[dict[str, torch.Tensor]], None], *, batch_size: int, num_workers: int,
                device: object, channels_last: bool, what: str) -> None:
    """The local engine: ``src`` through ``net`` in batches (the dataset engine's loader), each
    batch's activations handed to ``consume`` inside ``no_grad``."""
    fmt = memory_format(net, channels_last)
    # capture's clone (its default): a shallower tested layer followed by an in-place op
    # (ReLU(inplace=True)) keeps its own output; the deepest layer ends the pass (stop_after)
    # before its clone is made, so only the shallower layers are copied
    with state_guard(net, memory_format=fmt), capture(net, list(layers)) as cap, \
            torch.no_grad():
        for x, _, _ in loader(src, batch_size, num_workers):
            consume(layer_activations(net, x, layers, device=device, channels_last=channels_last, what=what,
                                      cap=cap))


class _Sums:
    """Called with each batch's activations in order (layer -> (b, C, H, W)): adds ``m``'s columns
    for those images times their flattened activations to each set's per-layer sum (``m``: (S, U)
    membership of the union's images in the sets), and keeps the rows when asked."""

    def __init__(self, m: torch.Tensor, keep_rows: bool) -> None:
        self.m, self.keep_rows, self.start = m, keep_rows, 0
        self.totals: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}

    def __call__(self, acts: dict[str, torch.Tensor]) -> None:
        b = int(next(iter(acts.values())).shape[0])
        mb = self.m[:, self.start:self.start + b]
        for n, a in acts.items():
            self.shapes[n] = tuple(a.shape[1:])
            flat = a.reshape(b, -1)
            s = mb @ flat.double()
            self.totals[n] = s if n not in self.totals else self.totals[n] + s
            if self.keep_rows:
                self.rows.setdefault(n, []).append(flat.float().cpu())
        self.start += b


def set_statistics(net: nn.Module, sets: Sequence[ImageSet], layers: Sequence[str], *, keep_rows: bool,
                   batch_size: int, num_workers: int = 0, device: object = None,
                   channels_last: bool = False, disk: DiskCache | None = None, engine: str = "local",
                   ray_address: str | None = None) -> list[dict[str, SetStats]]:
    """For each set, per layer, the sum (and with ``keep_rows`` the rows) of the set's flattened
    activations. One pass per batch (``no_grad``) serves every layer and every set that holds
    the batch's images (an image in several sets runs once); it stops after the deepest layer.
    ``channels_last``: run the passes in that memory format (same values up to float rounding).
    ``disk``: keep the result in (and read it from) that on-disk cache. ``engine``: ``"local"``
    (this process, ``num_workers`` reading images) or ``"ray"`` (the shared chunk engine's Ray
    actors, :mod:`convscope.methods.tcav._chunks`; the same sums, batch by batch)."""
    fmt = memory_format(net, channels_last)

    def compute() -> list[dict[str, SetStats]]:
        dev = model_device(net, device)
        out: list[dict[str, SetStats]] = [{} for _ in sets]
        for base, members in _groups(sets):
            union = np.unique(np.concatenate([idx for _, idx in members]))
            where = {int(i): j for j, i in enumerate(union)}
            # (S, U) membership: how often each union image is in each set (drawn without
            # replacement: 0 or 1)
            m = torch.zeros(len(members), len(union), dtype=torch.float64)
            for r, (_, idx) in enumerate(members):
                m[r, [where[int(i)] for i in idx]] += 1.0
            sums = _Sums(m.to(dev), keep_rows)
            src = base if len(union) == len(base) and (union == np.arange(len(base))).all() \
                else Subset(base, union.tolist())
            what = "images of " + ", ".join(repr(sets[k].name) for k, _ in members[:3])
            kw = dict(batch_size=batch_size, device=device, channels_last=channels_last, what=what)
            if engine == "ray":
                from convscope.methods.tcav._chunks import ray_pass

                ray_pass(net, src, layers, sums, rows=layer_activations, ray_address=ray_address, **kw)
            else:
                _local_pass(net, src, layers, sums, num_workers=num_workers, **kw)
            held = {n: torch.cat(sums.rows[n]) for n in layers} if keep_rows else {}
            for r, (k, idx) in enumerate(members):
                pos = torch.as_tensor([where[int(i)] for i in idx])
                for n in layers:
                    out[k][n] = SetStats(len(idx), sums.totals[n][r].cpu().clone(),
                                         held[n][pos] if keep_rows else None, sums.shapes[n])
        return out

    keys = tuple(s.key for s in sets)
    parts = ("concept_set_stats", tuple(layers), bool(keep_rows), keys, fmt is not None)
    also = [] if keep_rows else [("concept_set_stats", tuple(layers), True, keys, fmt is not None)]
    stored = compute if disk is None else lambda: disk.get(parts, compute, _pack, _unpack)
    return shared(parts, net, _NO_INPUT, stored, also=also)


def _graph_above(cap: Any, x: torch.Tensor, layers: Sequence[str],
                 above: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The class scores and the layers' activations of one batch, with an autograd graph from the
    first captured layer up (``above``: :meth:`~convscope.core.hooks.Capture.run_above`, no graph
    below it) or from the input (a fresh leaf: the caller's tensor stays as it is)."""
    cap.reset()
    out = cap.run_above(x) if above else cap.run(x.detach().requires_grad_(True))
    acts = [cap.activation(n) for n in layers]
    for n, a in zip(layers, acts, strict=True):
        _check_spatial(n, a)
    return class_scores(out), acts


def directional_derivatives(
    net: nn.Module, images: ImageSet, target: int, vectors: dict[str, torch.Tensor], *,
    batch_size: int, num_workers: int = 0, device: object = None, channels_last: bool = False,
    disk: DiskCache | None = None,
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
        above = True
        with state_guard(net, memory_format=fmt), capture(net, layers) as cap:
            for x, _, _ in loader(images.source, batch_size, num_workers):
                cap.reset()
                x = x.to(dev) if fmt is None else x.to(dev).contiguous(memory_format=fmt)
                with torch.enable_grad():
                    try:
                        scores, acts = _graph_above(cap, x, layers, above)
                        if above and not all(t.requires_grad for t in (scores, *acts)):
                            above = False  # a layer off the first one's path: a graph from the input
                            scores, acts = _graph_above(cap, x, layers, above)
                    except (RuntimeError, ValueError, TypeError) as exc:
                        raise _model_error(exc, "class images") from None
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
    stored = compute if disk is None else lambda: disk.get(parts, compute)
    return shared(parts, net, _NO_INPUT, stored)
