"""What a batch store records about where its numbers came from: the versions of the software, a
fingerprint of the model's weights and the input files with their content hashes (checked on
resume and by ``verify``)."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _versions(engine: str) -> dict[str, str]:
    import torchvision

    from convscope.core.version import __version__

    v = {
        "convscope": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import zarr

        v["zarr"] = zarr.__version__
    except ImportError:
        pass
    if engine == "ray":
        import ray

        v["ray"] = ray.__version__
    return v


def model_fingerprint(net: torch.nn.Module) -> str:
    """SHA-256 over the state dict's names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def input_files(src: Any) -> tuple[Path, list[str]] | None:
    """(folder, the file of each item) when ``src`` reads an image folder, else ``None``."""
    from convscope.data.sources import FolderSource, Subset

    if isinstance(src, Subset):
        base = input_files(src.base)
        return None if base is None else (base[0], [base[1][i] for i in src.indices])
    if isinstance(src, FolderSource):
        return src.root.resolve(), list(src.files)
    return None


def data_identity(src: Any) -> tuple[dict[str, Any], tuple[Path, list[str]] | None]:
    """What identifies a job's data in its store, and its input files (:func:`input_files`).

    For an image folder, the files' names (their contents are fingerprinted per chunk, so a changed
    file makes its chunk stale instead of the whole store another job's); otherwise the source's
    ``describe()``.
    """
    files = input_files(src)
    data_id = src.describe()
    if files is not None:
        data_id.pop("files_sha256", None)
        data_id["names_sha256"] = hashlib.sha256("\0".join(files[1]).encode()).hexdigest()
    return data_id, files
