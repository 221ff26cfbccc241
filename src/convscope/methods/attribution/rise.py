"""RISE (Petsiuk, Das and Saenko, "RISE", BMVC 2018) on the batched engine.

``N`` random masks, each a ``cells x cells`` Bernoulli(p) grid upsampled bilinearly and shifted
at random; ``M = 1 / (N p) * sum_i S(x * m_i + b * (1 - m_i)) m_i``. Sampling stops once the map
is stable (the default stopping rule, :data:`convscope.engines.perturb.DEFAULT_CONVERGE`); ``n_masks`` is
the maximum.
"""

from __future__ import annotations

import torch

from convscope.core.errors import InputError
from convscope.core.validate import ints, reals
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._engine import (
    AUTO,
    ENGINE_CHOICES,
    ENGINE_RANGES,
    SCORES,
    Engine,
    with_engine,
)
from convscope.methods.attribution._options import Sampling, with_sampling
from convscope.methods.attribution._sampling import rise_masks
from convscope.methods.attribution._surrogate import CONVERGE_RANGES, until_stable
from convscope.methods.registry import CueClaim, register
from convscope.models.inputs import BASELINES

__all__ = ["rise"]


@register(
    "rise",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    summary="average of many random smooth masks, each weighted by the class score the model "
    "gives the image seen through it",
    caveats="a Monte-Carlo estimate: noisy for few masks; the mask resolution (cells) limits "
    "the detail",
    reference="Petsiuk, Das and Saenko 2018, RISE: Randomized Input Sampling for Explanation of "
    "Black-box Models",
    fast_options={"n_masks": 64, "check_every": 64},
    ranges={**ENGINE_RANGES, **CONVERGE_RANGES, "n_masks": ints(1, 1_000_000), "cells": ints(1, 10_000),
            "p": reals(0, 1, lo_open=True), "baseline": reals(0, 1)},
    choices={**ENGINE_CHOICES, "baseline": (AUTO, *BASELINES), "score": SCORES},
    claims=(
        CueClaim(n=16, at_least=0.7, options={'n_masks': 300, 'cells': 8}, measured=0.875),
    ),
)
@with_sampling(score="softmax", check_every=250)
@with_engine
def rise(
    ctx: MethodContext,
    n_masks: int = 2000,
    cells: int = 7,
    p: float = 0.5,
    baseline: str | float | torch.Tensor = AUTO,
    sampling: Sampling = Sampling(),
    engine: Engine = Engine(),
) -> MethodOutput:
    """RISE (the default ``score="softmax"`` is the paper's; a round is ``check_every`` masks).

    Args:
        n_masks: the most random masks (all of them with ``converge=None``).
        cells: grid cells per side before upsampling.
        p: probability that a cell is kept.
        baseline: what shows through where a mask is 0: ``"auto"`` (default: per image, the
            candidate of grey, blur, black and the image's mean colour with the lowest target score,
            recorded in ``diagnostics["baseline_chosen"]``; ``docs/methods.md`` has the measurement
            behind it), or any baseline of :func:`convscope.models.inputs.baseline` (see :func:`occlusion`).

    Shape:
        map (B, H, W). Diagnostics per image: ``n_samples`` (masks used), ``stability`` (the
        last correlation of successive estimates), ``reliability`` (the predicted correlation of
        two independent runs' maps, from the even and the odd masks).
    """
    score, converge, check_every = sampling.score, sampling.converge, sampling.check_every
    if n_masks < 1 or not 0 < p <= 1 or cells < 1 or check_every < 1:
        raise InputError("rise needs n_masks >= 1, 0 < p <= 1, cells >= 1 and check_every >= 1")
    run = engine.start(ctx, n_evals=n_masks, desc="rise")
    B, C, H, W = ctx.x.shape
    maps, used, stab, rel = [], [], [], []
    for b in range(B):
        xb = ctx.x[b]
        base = run.baseline(b, baseline, score)
        sc = run.scorer(b, score)
        gen = torch.Generator().manual_seed(ctx.seed)
        acc = torch.zeros(2, H * W, dtype=torch.float64, device=xb.device)  # even, odd draws

        def step(a: int, e: int, xb: torch.Tensor = xb, base: torch.Tensor = base, sc=sc,  # noqa: ANN001
                 gen: torch.Generator = gen, acc: torch.Tensor = acc) -> torch.Tensor:
            masks = rise_masks(e - a, (H, W), cells, p, gen, device=xb.device)
            s = run.evaluate(lambda i, j: base + masks[i:j, None] * (xb - base), e - a, sc)
            odd = (torch.arange(a, e, device=xb.device) % 2).bool()
            for half, rows in ((0, ~odd), (1, odd)):
                acc[half] += s[rows].double() @ masks[rows].flatten(1).double()
            return acc

        _, done, conv = until_stable(n_masks, check_every, converge, step,
                                     estimate=lambda acc: acc.sum(0), halves=lambda acc: (acc[0], acc[1]))
        maps.append((acc.sum(0) / (done * p)).float().view(H, W))
        used.append(done)
        stab.append(conv.stability)
        rel.append(conv.reliability)
    return run.output(maps, normalize="minmax", n_samples=used, stability=stab, reliability=rel)
