"""The concept test's set passes on the shared chunk engine (:mod:`convscope.methods.jobs`): ``engine="ray"``.

The images of a group of sets become a chunked job whose chunks are the local pass's batches
(``chunk_size = batch_size``), each computed by :func:`convscope.methods.tcav._passes.layer_activations`
(the same function the local pass calls) on a Ray actor and written as rows of flattened
activations, one array per layer, into a temporary Zarr store. The driver then reads the store
chunk by chunk, in order, and sums it exactly as the local pass sums its batches, so the two
engines give the same numbers; memory holds one chunk, the store the activations (on disk, removed
when the pass ends).
"""

from __future__ import annotations

import math
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.methods.jobs.batch import BatchJob
from convscope.methods.jobs.runner import prepare_store, run_chunks
from convscope.methods.jobs.store import FORMAT, zarr_module

__all__ = ["ENGINES", "check_ray", "ray_pass"]

#: Where the set passes run: in this process (the default) or on Ray actors.
ENGINES = ("local", "ray")


def check_ray(model_device: torch.device | None, ray_address: str | None) -> None:
    """Refuse, before Ray starts, what the Ray pass cannot do: a model off the CPU (the actors get
    no GPU and the driver sums the chunks on the CPU) and a Ray on another machine (the chunks go
    to a temporary store on this machine's disk, which actors elsewhere cannot write).

    Raises:
        InputError: the model is not on the CPU, or ``ray_address`` names another host.
    """
    if model_device is not None and model_device.type != "cpu":
        raise InputError(f"engine='ray' runs the set passes on CPU actors but the model is on "
                         f"{model_device}; use engine='local' or move the model to the CPU (model.cpu())")
    if ray_address is None or ray_address in ("auto", "local"):
        return
    host = ray_address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host not in ("localhost", "127.0.0.1", "::1", socket.gethostname()):
        raise InputError(f"ray_address {ray_address!r} is not this machine: the Ray pass writes its "
                         "chunks to a temporary store here; use a Ray on this machine or engine='local'")


@dataclass
class _Net:
    """What :class:`~convscope.methods.jobs.BatchJob` reads of a loaded model: ``.model``."""

    model: nn.Module


@dataclass
class _ActivationJob(BatchJob):
    """One chunk = one batch of the local pass; its rows: each image's flattened activations per layer."""

    rows: Callable[..., dict[str, torch.Tensor]] | None = None

    def batches(self, chunk: int) -> list[list[int]]:
        lo, hi = chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, len(self.source))
        return [list(range(lo, hi))]

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
        self._ready()
        assert self.rows is not None
        acts = self.rows(self.model.model, x, self.options["layers"], device=self.device,
                         channels_last=self.options["channels_last"], what=self.options["what"])
        return {f"a{i}": a.reshape(a.shape[0], -1).float().cpu().numpy()
                for i, a in enumerate(acts.values())}


def ray_pass(net: nn.Module, src: Any, layers: Sequence[str],
             consume: Callable[[dict[str, torch.Tensor]], None], *,
             rows: Callable[..., dict[str, torch.Tensor]], batch_size: int, device: Any, channels_last: bool,
             what: str, ray_address: str | None = None) -> None:
    """Run ``src`` through ``net`` on Ray, batch by batch as the local pass does, and hand each
    batch's activations (layer -> (b, C, H, W), in order) to ``consume``.

    The first image runs here first (``rows``), so a model that cannot take the images or a
    layer without spatial activations fails with the local pass's one-line error before Ray starts.
    """
    opts = {"layers": list(layers), "channels_last": bool(channels_last), "what": what}
    x0 = src[0][0][None]
    shapes = {n: tuple(a.shape[1:]) for n, a in rows(net, x0, list(layers), device=device,
                                                     channels_last=channels_last, what=what).items()}
    size = len(src)
    names = [f"a{i}" for i in range(len(layers))]
    arrays = {a: ("float32", np.nan) for a in names}
    dims = {a: (size, math.prod(shapes[n])) for a, n in zip(names, layers, strict=True)}
    tmp = Path(tempfile.mkdtemp(prefix="convscope-concepts-"))
    try:
        manifest = {"format": FORMAT, "status": "running", "array_names": names,
                    "arrays": {a: {"shape": list(s)} for a, s in dims.items()}}
        chunking = {"size": size, "chunk_size": batch_size, "n_chunks": math.ceil(size / batch_size),
                    "axis": 0}
        store = prepare_store(tmp / "acts.zarr", {"kind": "concept_activations", "layers": list(layers)},
                              chunking, manifest, dims, batch_size, None, False, dtypes=arrays)
        job = _ActivationJob(_Net(net), src, "activations", None, None, opts, batch_size, 0, str(store.path),
                             batch_size, device=None if device is None else str(device), fsync=False,
                             rows=rows)
        run_chunks(job, store, engine="ray", num_workers=0, ray_address=ray_address, slots=None,
                   progress=None)
        zarr = zarr_module()
        held = {a: zarr.open_array(str(store.path / a), mode="r") for a in names}
        for c in range(store.n_chunks):
            lo, hi = store.rows(c)
            consume({n: torch.from_numpy(np.asarray(held[a][lo:hi])).reshape(hi - lo, *shapes[n])
                     for a, n in zip(names, layers, strict=True)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
