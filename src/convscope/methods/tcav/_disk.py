"""A concept test's model passes kept on disk, between processes (``concept_test(cache_dir=...)``).

What is kept are the passes' results, from which the vectors and every score are recomputed
without the model: each set's activation sums (and rows, for a trained classifier) per layer, and
the class images' directional derivatives along the vectors. A file is named by a SHA-256 over

* the model's weights (every parameter's and buffer's name, shape, dtype and bytes),
* the preprocessing (how images become inputs),
* what the pass computes: its kind, the layers, the sets' content digests, the target and the
  vectors' digest (:mod:`convscope.methods.tcav._passes`).

Other weights, another set or another layer are another file. A file that cannot be read (torn,
foreign) is recomputed and rewritten; a write goes to a temporary file first and is renamed into
place, so a crash never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from convscope.core.errors import InputError

__all__ = ["DiskCache", "weights_digest"]

T = TypeVar("T")


def weights_digest(net: nn.Module) -> str:
    """A SHA-256 over every parameter's and buffer's name, shape, dtype and values."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class DiskCache:
    """Pass results of one model (weights and preprocessing) in a folder.

    Args:
        folder: where the files go (created if missing).
        model: the network; its weights are digested once, here.
        preprocessing: a description of how images become the model's inputs (JSON-able).

    Attributes:
        hits, misses: files read and files written since this object was made.

    Raises:
        InputError: the folder cannot be created or is a file.
    """

    def __init__(self, folder: str | os.PathLike, model: nn.Module, preprocessing: Any) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot use {self.folder} as the concept cache ({exc.strerror}); "
                             "give a writable folder") from None
        self._base = weights_digest(model) + json.dumps(preprocessing, sort_keys=True, default=str)
        self.hits = 0
        self.misses = 0

    def path(self, parts: tuple[Hashable, ...]) -> Path:
        """The file that holds the value of ``parts``."""
        key = hashlib.sha256((self._base + repr(parts)).encode()).hexdigest()
        return self.folder / f"tcav-{key}.pt"

    def get(self, parts: tuple[Hashable, ...], compute: Callable[[], T],
            pack: Callable[[T], Any] = lambda v: v, unpack: Callable[[Any], T] = lambda v: v) -> T:
        """The value stored for ``parts``, else ``compute()`` stored and returned. ``pack``/``unpack``
        turn the value into tensors, numbers, strings, lists and dicts (what ``torch.load`` reads
        with ``weights_only=True``) and back."""
        f = self.path(parts)
        if f.is_file():
            try:
                value = unpack(torch.load(f, map_location="cpu", weights_only=True))
            except Exception:  # noqa: BLE001 - a torn or foreign file: recompute it
                pass
            else:
                self.hits += 1
                return value
        value = compute()
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tcav-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(pack(value), fh)
            os.replace(tmp, f)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise InputError(f"cannot write the concept cache file {f} ({exc.strerror}); give a "
                             "writable folder with free space") from None
        self.misses += 1
        return value
