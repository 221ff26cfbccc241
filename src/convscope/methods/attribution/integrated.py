"""Integrated gradients (Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks",
2017).

For an input ``x``, a baseline ``x'`` and the target score ``F``::

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x')) / dx_i  da
            ~ (x_i - x'_i) * sum_k w_k dF(x' + a_k (x - x')) / dx_i

Completeness: ``sum_i IG_i = F(x) - F(x')`` for the exact integral; the quadrature error of the
chosen rule is reported with every result as ``diagnostics["completeness_gap"]`` (per sample,
``sum_i IG_i - (F(x) - F(x'))``) and ``completeness_rel_gap`` (divided by ``|F(x) - F(x')|``).

Rules (``steps`` model evaluations per image for every rule):

* ``"riemann_left"``: ``a_k = k / m``, ``k = 0..m-1``, ``w_k = 1/m``;
* ``"riemann_right"``: ``a_k = k / m``, ``k = 1..m``;
* ``"riemann_middle"``: ``a_k = (k + 1/2) / m``;
* ``"riemann_trapezoid"``: ``a_k = k / (m - 1)``, ``k = 0..m-1``, ``w = 1/(m-1)`` halved at both
  ends (needs ``steps >= 2``);
* ``"gausslegendre"`` (default): Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1];
  exact for polynomials of degree ``2m - 1``, much faster convergence on smooth paths.

Baselines, in pixel space whatever the model's normalisation (:func:`convscope.models.inputs.baseline`):
``"black"`` (default; also ``"zero"``), ``"white"``, ``"grey"``, ``"mean"``; ``"blur"``, the input
blurred by a Gaussian of ``blur_sigma`` pixels (default ``max(H, W) / 10``), edges replicated;
``"uniform"``, seeded uniform noise pixels (one draw shared by the batch, so results do not depend
on batch composition); a number (a grey level in [0, 1]); or a model-space tensor broadcastable to
the input, e.g. (C, H, W), (1, C, H, W) or (B, C, H, W).

Path points are evaluated in chunks of ``internal_batch_size`` (default: ``batch_size``) rows of
the virtual (B * steps) batch; the weighted gradients are summed in float64 as each chunk
finishes, so peak memory is set by the chunk size, not by ``steps``.

Map: ``sum_c IG_c`` (signed); ``raw``: IG per channel (B, C, H, W).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from convscope.core.errors import MethodError
from convscope.core.targets import select_scores
from convscope.core.validate import ints, reals
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._sampling import row_chunks, rows_target
from convscope.methods.attribution._shared import clean_outputs
from convscope.methods.registry import CueClaim, register
from convscope.models.inputs import BASELINES
from convscope.models.inputs import baseline as make_baseline

__all__ = ["RULES", "integrated_gradients", "quadrature"]

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of ``rule`` with ``steps`` points."""
    if int(steps) != steps or steps < 1:
        raise MethodError(f"steps must be a positive integer, got {steps!r}")
    m = int(steps)
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(m)
        return (t + 1.0) / 2.0, w / 2.0
    if rule == "riemann_left":
        return np.arange(m) / m, np.full(m, 1.0 / m)
    if rule == "riemann_right":
        return np.arange(1, m + 1) / m, np.full(m, 1.0 / m)
    if rule == "riemann_middle":
        return (np.arange(m) + 0.5) / m, np.full(m, 1.0 / m)
    if rule == "riemann_trapezoid":
        if m < 2:
            raise MethodError("the trapezoid rule needs steps >= 2")
        w = np.full(m, 1.0 / (m - 1))
        w[0] = w[-1] = 0.5 / (m - 1)
        return np.arange(m) / (m - 1), w
    raise MethodError(f"unknown integration rule {rule!r}; use one of {', '.join(RULES)}")


@register(
    "integrated_gradients",
    family="gradient",
    signed=True,
    summary="each pixel's share of the score difference between the image and a baseline, "
    "integrating the gradient along the straight path between them (sums to the difference)",
    caveats="depends on the baseline (black, blurred, noise); costs `steps` gradient passes; check "
    "the completeness gap in diagnostics",
    reference="Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks",
    options={"baseline": "black", "steps": 32, "rule": "gausslegendre",
             "internal_batch_size": None, "blur_sigma": None},
    fast_options={"steps": 8},
    ranges={"baseline": reals(0, 1), "steps": ints(1, 100_000), "internal_batch_size": ints(1),
            "blur_sigma": reals(0, lo_open=True)},
    choices={"baseline": tuple(BASELINES), "rule": RULES},
    claims=(
        CueClaim(n=200, at_least=0.72, clean_below=0.15, measured=0.825,
                 options={'steps': 8}),
    ),
)
def integrated_gradients(
    ctx: MethodContext,
    baseline: Any = "black",
    steps: int = 32,
    rule: str = "gausslegendre",
    internal_batch_size: int | None = None,
    blur_sigma: float | None = None,
) -> MethodOutput:
    """Integrated gradients.

    Args:
        baseline: ``"black"``, ``"white"``, ``"grey"``, ``"mean"``, ``"blur"``, ``"uniform"`` (pixel
            space), a grey level in [0, 1], or a model-space tensor.
        steps: model evaluations per image.
        rule: ``"gausslegendre"`` or ``"riemann_left|right|middle|trapezoid"``.
        internal_batch_size: path points per forward/backward pass (default: ``batch_size``);
            bounds peak memory; never changes the result beyond float rounding.
        blur_sigma: Gaussian sigma in pixels for ``baseline="blur"``.

    Shape:
        map (B, H, W) = sum over C of IG (signed); raw (B, C, H, W) = IG.
    """
    assert ctx.model is not None
    alphas_np, weights_np = quadrature(steps, rule)
    x = ctx.x.detach()
    b = x.shape[0]
    base = make_baseline(x, baseline, ctx.preprocessing, seed=ctx.seed,
                         sigma=blur_sigma if blur_sigma is not None else max(x.shape[-2:]) / 10.0)
    chunk = int(internal_batch_size or ctx.batch_size)
    logits = clean_outputs(ctx.model, x, ctx.batch_size)
    resolved = ctx.resolve(logits)
    labels: list[int | None] = resolved.labels() or [None] * b
    f_x = select_scores(logits, resolved).double()
    f_base = select_scores(clean_outputs(ctx.model, base, ctx.batch_size), resolved).double()

    alphas = torch.as_tensor(alphas_np, dtype=x.dtype, device=x.device)
    weights = torch.as_tensor(weights_np, dtype=torch.float64, device=x.device)
    delta = x - base
    acc = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    shape1 = (-1,) + (1,) * (x.ndim - 1)
    for img, k in row_chunks(b, int(steps), chunk):
        img_d, k_d = img.to(x.device), k.to(x.device)
        xs = torch.addcmul(base[img_d], alphas[k_d].view(shape1), delta[img_d])
        xs.requires_grad_(True)
        out = ctx.model(xs)
        s = select_scores(out, rows_target(resolved, img))
        (g,) = torch.autograd.grad(s.sum(), xs)
        # weight and reduce the chunk's rows per image in the input dtype first, then add the
        # few per-image sums to the float64 accumulator (no float64 copy of the whole chunk)
        g.mul_(weights[k_d].to(g.dtype).view(shape1))
        uniq, inv = torch.unique_consecutive(img_d, return_inverse=True)
        part = torch.zeros((uniq.numel(), *g.shape[1:]), dtype=g.dtype, device=g.device)
        part.index_add_(0, inv, g)
        acc.index_add_(0, uniq, part.double())
    attr64 = delta.double() * acc
    total = attr64.flatten(1).sum(1)
    diff = f_x - f_base
    gap = total - diff
    attr = attr64.to(x.dtype)
    return MethodOutput(
        map=attr.sum(1),
        targets=labels,
        raw=attr,
        logits=logits,
        diagnostics={
            "completeness_gap": gap.tolist(),
            "completeness_rel_gap": (gap.abs() / diff.abs().clamp(min=1e-12)).tolist(),
            "score": f_x.tolist(),
            "baseline_score": f_base.tolist(),
            "steps": int(steps),
            "rule": rule,
            "baseline": baseline if isinstance(baseline, (str, int, float)) else "tensor",
        },
    )
