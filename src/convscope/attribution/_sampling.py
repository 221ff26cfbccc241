"""Helpers shared by the methods that evaluate the model on many derived inputs of each image
(SmoothGrad's noisy copies, integrated gradients' path points).

The derived inputs of image ``b`` are rows ``b * n ... b * n + n - 1`` of a virtual (B * n) batch
that is never materialised: :func:`row_chunks` walks it in chunks of at most ``chunk`` rows, so
memory is set by the chunk size, not by ``n``. Targets are resolved once on the clean inputs (a
noisy copy may change the predicted class) and repeated for the rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import InputError
from ..models.forward import chunked_outputs
from ..targets import ResolvedTarget
from ._base import MethodContext

__all__ = ["clean_logits", "row_chunks", "rows_target"]


def clean_logits(ctx: MethodContext, x: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``x`` (default ``ctx.x``) without gradients, in chunks of ``ctx.batch_size``."""
    assert ctx.model is not None
    return chunked_outputs(ctx.model, ctx.x if x is None else x, ctx.batch_size)


def row_chunks(n_images: int, n: int, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image index, sample index) long tensors for chunks of the virtual (n_images * n) batch."""
    if chunk < 1:
        raise InputError(f"the sample batch size must be a positive integer, got {chunk}")
    total = n_images * n
    for start in range(0, total, chunk):
        r = torch.arange(start, min(start + chunk, total))
        yield r // n, r % n


def rows_target(resolved: ResolvedTarget, images: torch.Tensor) -> ResolvedTarget:
    """The target of each row, given the image index of each row."""
    return resolved.take(images)
