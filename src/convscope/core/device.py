"""Where a computation runs: :func:`check_device` checks a device argument at the edge, once, and
says in one line what to pass instead (a CUDA device on a machine without one, a bad index, a
device type this build of torch does not know)."""

from __future__ import annotations

from typing import Any

import torch

from convscope.core.errors import InputError

__all__ = ["check_device"]


def check_device(device: Any, what: str = "device") -> Any:
    """``device`` if torch can run there now, else a one-line :class:`InputError`.

    ``None`` (the model's own device) passes. A string that is not a device (``"bogus"``), or an
    accelerator this machine lacks (``"cuda"`` without a GPU, ``"cuda:3"`` on a one-GPU machine,
    ``"mps"`` off Apple silicon), is refused here, before any work, instead of failing with a
    torch traceback deep inside a job.
    """
    if device is None:
        return None

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{what} {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"{what} {device!r}: no CUDA GPU is available here; use cpu (or leave it out)")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"{what} {device!r}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"{what} {device!r}: MPS is not available here; use cpu (or leave it out)")
    elif dev.type != "cpu":
        raise InputError(f"{what} {device!r}: convscope runs on cpu, cuda or mps")
    return device
