"""Seeded randomness for one block: :func:`seeded` fixes torch's global generators (CPU and the
device's) inside it and puts their states back on exit, so a seeded call leaves the caller's
random stream where it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["seeded"]


@contextmanager
def seeded(seed: int | None, device: str | torch.device | None = None) -> Iterator[None]:
    """Seed torch's global generator for the block; the caller's RNG state is back on exit.

    Only the CPU generator and, for a CUDA ``device``, that device's generator are forked and
    seeded. ``torch.manual_seed`` would also queue seeds for every CUDA, XPU and MTIA device that
    ``fork_rng(devices=[])`` does not restore (they would reach the caller's RNG when the device
    is first used), and it records a stack trace for each queued seed (about 1 ms a call).

    Args:
        seed: the seed; ``None``: fork without seeding (the block draws from the caller's state,
            which is restored anyway).
        device: where the block draws random numbers (default: the CPU only).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda":  # the CPU generator's state read and put back directly (what fork_rng does
        cpu = torch.default_generator  # for it, without its per-call checks: half the time)
        state = cpu.get_state()
        try:
            if seed is not None:
                cpu.manual_seed(int(seed))
            yield
        finally:
            cpu.set_state(state)
        return
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.default_generator.manual_seed(int(seed))
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(int(seed))
        yield
