"""Classical non-parametric texture synthesis (Efros and Leung), vectorised.

Reference:
    Efros, Leung, "Texture synthesis by non-parametric sampling", ICCV 1999.

The output grows from a small seed patch copied from the source. Pixels are filled in onion
order: the unfilled pixels touching the filled region, those with the most filled neighbours in
their window first. For a pixel with window ``T`` (w x w, C channels) and validity mask ``M``
(1 where ``T`` is already filled), the distance to every full w x w source patch ``S_p`` is the
Gaussian-weighted, masked SSD

    d(p) = sum_k g_k M_k (S_p[k] - T[k])^2 / sum_k g_k M_k,      g: Gaussian, sigma = w / 6.4

computed for **all** patches at once as ``[P^2, P] @ [gm, -2 gm T] + gm . T^2``: one matrix-vector
product with the unfolded source patches ``P`` (N x C w^2) and their squares, precomputed once
(``F.unfold``).
One candidate is drawn uniformly (seeded) among the patches with ``d <= (1 + tolerance) d_min``,
and the centre pixel of that patch is copied. If ``d_min`` exceeds ``max_error``, the pixel waits;
if a whole pass fills nothing, ``max_error`` grows by 10% (as in the paper).

The Python loop runs over output pixels (the method is sequential by nature); each step is a few
vectorised tensor operations over the whole source. The source (row, column) of every synthesized
pixel is recorded in ``extras["source_coords"]`` (H, W, 2), so a caller can check that every
pixel, and so every patch, was copied from the source.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from convscope.core.errors import InputError
from convscope.core.image import ImageLike
from convscope.methods.synthesis._common import load_pixels, progress_bar
from convscope.methods.synthesis.results import SynthesisResult

__all__ = ["efros_leung", "gaussian_window", "patch_distances"]


def gaussian_window(w: int, sigma: float | None = None) -> torch.Tensor:
    """(w, w) Gaussian weights with ``sigma = w / 6.4`` by default (Efros and Leung)."""
    s = w / 6.4 if sigma is None else float(sigma)
    r = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s * s))
    return (g / g.sum()).float()


def source_patches(source: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All full w x w patches of ``source`` and the (row, col) of their centres.

    Shape:
        source: (C, Hs, Ws); returns P (N, C*w*w) (channel-major, like ``F.unfold``) and
        centres (N, 2) long.
    """
    c, hs, ws = source.shape
    if hs < w or ws < w:
        raise InputError(f"the source ({hs}x{ws}) is smaller than the window ({w}x{w})")
    p = F.unfold(source[None], kernel_size=w)[0].T.contiguous()  # (N, C*w*w)
    h = w // 2
    rows = torch.arange(hs - w + 1) + h
    cols = torch.arange(ws - w + 1) + h
    centres = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    return p, centres


def patch_distances(
    stacked: torch.Tensor,
    window: torch.Tensor,
    valid: torch.Tensor,
    gauss: torch.Tensor,
) -> torch.Tensor:
    """Normalised, Gaussian-weighted masked SSD from one window to every source patch.

    ``stacked`` is ``torch.cat([P * P, P], 1)`` for the source patches ``P`` (see
    :func:`source_patches`), so the whole distance vector is one matrix-vector product.

    Shape:
        stacked: (N, 2*C*w*w); window: (C, w, w); valid: (w, w) float (0/1); gauss: (w, w).
        Returns (N,): ``sum_k g_k M_k (P[n, k] - T[k])^2 / (C sum_k g_k M_k)``.
    """
    c = window.shape[0]
    gm = (gauss * valid).expand(c, -1, -1).reshape(-1)
    t = window.reshape(-1)
    gmt = gm * t
    d = stacked @ torch.cat([gm, -2.0 * gmt]) + (gmt * t).sum()
    return d.clamp(min=0) / gm.sum().clamp(min=1e-12)


def efros_leung(
    source: ImageLike | torch.Tensor,
    size: int | tuple[int, int] = 64,
    *,
    window: int = 11,
    tolerance: float = 0.1,
    max_error: float = 0.3,
    seed_size: int = 3,
    source_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    sigma: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SynthesisResult:
    """Synthesise a texture of ``size`` from ``source`` by non-parametric sampling.

    Args:
        source: the texture image (path, PIL, array, or (C, H, W) / (1, C, H, W) pixels in [0, 1]).
        size: output side, or (height, width).
        window: odd window side w; larger windows keep larger structures.
        tolerance: candidates are the patches within ``(1 + tolerance) d_min``.
        max_error: a pixel waits while its best match is worse than this (on [0, 1] pixels,
            per channel); it grows by 10% after a pass that fills nothing.
        seed_size: side of the seed patch copied from a random place in the source.
        source_size: resize the source first (shorter side, or (h, w)); the cost per pixel is
            proportional to the number of source patches.
        channels: 1 or 3 to convert the source (default: keep).
        sigma: Gaussian of the window (default w / 6.4).
        seed: seeds the seed patch and every candidate draw.
        progress: tqdm bar over pixels (``None``: only on a terminal).

    Returns:
        A :class:`SynthesisResult` of kind ``"efros-leung"`` with ``extras["source_coords"]``
        (H, W, 2) long: the source (row, col) each output pixel was copied from.
    """
    if window < 3 or window % 2 == 0:
        raise InputError(f"window must be an odd integer >= 3, got {window}")
    if seed_size < 1 or seed_size > window:
        raise InputError(f"seed_size must lie in 1..window, got {seed_size}")
    if tolerance < 0 or max_error <= 0:
        raise InputError("tolerance must be >= 0 and max_error > 0")
    src = load_pixels(source, size=source_size, channels=channels, what="source")[0]
    c, hs, ws = src.shape
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if oh < seed_size or ow < seed_size:
        raise InputError(f"output size {oh}x{ow} is smaller than the seed patch")
    w, h = window, window // 2
    patches, centres = source_patches(src, w)
    stacked = torch.cat([patches * patches, patches], 1)
    gauss = gaussian_window(w, sigma)
    gen = torch.Generator().manual_seed(int(seed))

    out = torch.zeros(c, oh + 2 * h, ow + 2 * h)
    filled = torch.zeros(oh + 2 * h, ow + 2 * h, dtype=torch.bool)
    coords = torch.full((oh, ow, 2), -1, dtype=torch.long)
    errors = torch.full((oh, ow), float("nan"))

    # seed: a random seed_size x seed_size patch of the source, at the centre of the output
    sr = int(torch.randint(0, hs - seed_size + 1, (1,), generator=gen))
    sc = int(torch.randint(0, ws - seed_size + 1, (1,), generator=gen))
    r0, c0 = (oh - seed_size) // 2, (ow - seed_size) // 2
    out[:, h + r0:h + r0 + seed_size, h + c0:h + c0 + seed_size] = src[:, sr:sr + seed_size,
                                                                        sc:sc + seed_size]
    filled[h + r0:h + r0 + seed_size, h + c0:h + c0 + seed_size] = True
    rr, cc = torch.meshgrid(torch.arange(seed_size), torch.arange(seed_size), indexing="ij")
    coords[r0:r0 + seed_size, c0:c0 + seed_size, 0] = sr + rr
    coords[r0:r0 + seed_size, c0:c0 + seed_size, 1] = sc + cc
    errors[r0:r0 + seed_size, c0:c0 + seed_size] = 0.0

    ones = torch.ones(1, 1, w, w)
    total = oh * ow
    done = seed_size * seed_size
    threshold = float(max_error)
    bar = progress_bar(range(total), total=total, desc="efros-leung", progress=progress)
    bar.update(done)
    while done < total:
        inner = filled[h:h + oh, h:h + ow]
        touch = F.max_pool2d(filled[None, None].float(), 3, stride=1, padding=1)[0, 0, h:h + oh, h:h + ow]
        frontier = (touch > 0) & ~inner
        counts = F.conv2d(filled[None, None].float(), ones)[0, 0]  # (oh, ow): filled in window
        ys, xs = torch.nonzero(frontier, as_tuple=True)
        key = -counts[ys, xs].round().long() * (oh * ow) + ys * ow + xs  # most neighbours, then raster
        order = torch.argsort(key)
        progressed = False
        for i in order.tolist():
            y, x = int(ys[i]), int(xs[i])
            win = out[:, y:y + w, x:x + w]
            valid = filled[y:y + w, x:x + w].float()
            d = patch_distances(stacked, win, valid, gauss)
            dmin = float(d.min())
            if dmin > threshold:
                continue
            cand = torch.nonzero(d <= dmin * (1 + tolerance) + 1e-6, as_tuple=True)[0]  # + float32 slack
            k = int(cand[int(torch.randint(0, cand.numel(), (1,), generator=gen))])
            py, px = int(centres[k, 0]), int(centres[k, 1])
            out[:, y + h, x + h] = src[:, py, px]
            filled[y + h, x + h] = True
            coords[y, x, 0], coords[y, x, 1] = py, px
            errors[y, x] = float(d[k])
            done += 1
            bar.update(1)
            progressed = True
        if not progressed:
            threshold *= 1.1
    bar.close()
    img = out[:, h:h + oh, h:h + ow].clone()
    err = errors[torch.isfinite(errors)]
    return SynthesisResult(
        kind="efros-leung",
        images=img[None],
        titles=(f"Efros-Leung {oh}x{ow}, w={w}",),
        references=(("source", src),),
        options=dict(size=[oh, ow], window=w, tolerance=tolerance, max_error=max_error,
                     seed_size=seed_size, source_size=source_size, sigma=sigma, seed=seed),
        diagnostics=dict(mean_match_error=float(err.mean()), max_match_error=float(err.max()),
                         final_threshold=threshold, source_shape=[c, hs, ws],
                         source_patches=int(patches.shape[0]),
                         threshold_raised=not math.isclose(threshold, max_error)),
        extras={"source_coords": coords, "match_error": errors},
    )
