"""Helpers shared by the methods that evaluate the model on many derived inputs of each image:
SmoothGrad's noisy copies and integrated gradients' path points (:func:`row_chunks`), and the
random draws of the sampling perturbation methods (:func:`rise_masks`, :func:`lime_image_samples`
for LIME on images, :func:`coalition_samples` for LIME on text, :func:`shapley_samples` for Kernel
SHAP). Everything random takes an explicit
``torch.Generator``.

The derived inputs of image ``b`` are rows ``b * n ... b * n + n - 1`` of a virtual (B * n) batch
that is never materialised: :func:`row_chunks` walks it in chunks of at most ``chunk`` rows, so
memory is set by the chunk size, not by ``n``. Targets are resolved once on the clean inputs (a
noisy copy may change the predicted class) and repeated for the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from convscope.core.errors import InputError
from convscope.core.targets import ResolvedTarget

__all__ = ["coalition_samples", "lime_image_samples", "rise_masks", "row_chunks",
           "rows_target", "shapley_samples"]


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


def rise_masks(
    n: int, size: tuple[int, int], cells: int, p: float, generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """RISE masks: a random ``cells x cells`` binary grid (1 with probability ``p``), bilinearly
    upsampled to one cell more than the image and cropped at a random shift.

    Shape:
        returns (n, H, W) float in [0, 1].
    """
    h, w = size
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    grid = (torch.rand(n, 1, cells, cells, generator=generator) < p).float()
    up = F.interpolate(grid, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = torch.randint(0, ch, (n,), generator=generator)
    dx = torch.randint(0, cw, (n,), generator=generator)
    rows = (dy.view(-1, 1) + torch.arange(h).view(1, -1))  # (n, H)
    cols = (dx.view(-1, 1) + torch.arange(w).view(1, -1))  # (n, W)
    idx = torch.arange(n).view(-1, 1, 1)
    return up[idx, rows[:, :, None], cols[:, None, :]].to(device)


def _members(size: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    """(n, d) bool: True for the ``size[i]`` lowest of a random ranking of the d features."""
    n = size.shape[0]
    order = torch.rand(n, d, generator=generator).argsort(1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(d).expand(n, d).contiguous())
    return rank < size[:, None]


def coalition_samples(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """LIME's samples over ``d`` features: the first keeps everything; each other one hides a
    number of features drawn uniformly from 1..d, chosen at random.

    Shape:
        returns (n, d) float in {0, 1}.
    """
    z = torch.ones(n, d)
    if n > 1:
        k = torch.randint(1, d + 1, (n - 1,), generator=generator)
        z[1:] = (~_members(k, d, generator)).float()  # the k lowest-ranked features are hidden
    return z


def lime_image_samples(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """LIME's samples over ``d`` image segments, as the lime package's ``LimeImageExplainer``
    draws them: each segment shown with probability 1/2, independently; the first sample shows
    everything. Drawn in complementary pairs (variance reduction, the estimand unchanged): samples
    ``2i + 1`` and ``2i + 2`` are ``z`` and ``1 - z``, which are equally likely under the
    independent halves, so every sample is still marginally a fair coin per segment; in a pair
    the effect of every even-order interaction of segments on a weight's error cancels up to the
    pair's kernel weights.

    Shape:
        returns (n, d) float in {0, 1}.
    """
    z = torch.ones(n, d)
    if n > 1:
        half = (torch.rand((n - 1 + 1) // 2, d, generator=generator) < 0.5).float()
        pairs = torch.stack([half, 1 - half], 1).reshape(-1, d)  # z0, 1-z0, z1, 1-z1, ...
        z[1:] = pairs[: n - 1]
    return z


def shapley_samples(n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel SHAP samples: coalition sizes drawn from the Shapley kernel's distribution over
    sizes 1..d-1 (p(s) proportional to (d-1) / (s (d-s))), members at random; every sample gets
    weight 1 because the kernel is already in the sampling distribution. The two anchors (all
    present, none present) are added by the solver as constraints.

    Shape:
        returns (z (n, d) float in {0, 1}, weights (n,)).
    """
    if d < 2:
        return torch.ones(n, d), torch.ones(n)
    s = torch.arange(1, d, dtype=torch.float64)
    p = (d - 1) / (s * (d - s))
    size = torch.multinomial((p / p.sum()).float(), n, replacement=True, generator=generator) + 1
    return _members(size, d, generator).float(), torch.ones(n)
