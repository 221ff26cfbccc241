"""Kernel SHAP over superpixels (Lundberg and Lee, "A Unified Approach to Interpreting Model
Predictions", NeurIPS 2017).

The segments of :mod:`.segments`; coalitions drawn from the Shapley kernel's size distribution
and a least-squares fit constrained to ``sum(phi) = S(x) - S(baseline)``. Sampling stops once the
values are stable (the default stopping rule, :data:`convscope.engines.perturb.DEFAULT_CONVERGE`);
``n_samples`` is the maximum.
"""

from __future__ import annotations

import torch

from convscope.core.errors import InputError
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._engine import Engine, with_engine
from convscope.methods.attribution._options import Sampling, Segmentation, with_sampling, with_segmentation
from convscope.methods.attribution._sampling import shapley_samples
from convscope.methods.attribution._surrogate import shap_solve
from convscope.methods.attribution.segments import SEGMENT_CHOICES, SEGMENT_RANGES, SegmentFit, fit_segments
from convscope.methods.registry import CueClaim, register

__all__ = ["kernel_shap"]


@register(
    "kernel_shap",
    family="perturbation",
    needs_gradients=False,
    black_box=True,
    signed=True,
    summary="Shapley values of the superpixels: each segment's average contribution to the "
    "class score over random coalitions, summing to score(image) - score(baseline)",
    caveats="depends on the segmentation and the baseline that hides a segment; a sampled "
    "estimate (more samples, less noise)",
    reference="Lundberg and Lee 2017, A Unified Approach to Interpreting Model Predictions",
    fast_options={"n_samples": 48, "segmentation": "grid", "cell": 8, "check_every": 48},
    ranges=SEGMENT_RANGES,
    choices=SEGMENT_CHOICES,
    claims=(
        CueClaim(n=16, at_least=0.7, measured=0.81,
                 options={'segmentation': 'grid', 'cell': 8, 'n_samples': 150}),
    ),
)
@with_sampling(score="raw", check_every=100)
@with_segmentation
@with_engine
def kernel_shap(
    ctx: MethodContext,
    n_samples: int = 1000,
    segments: Segmentation = Segmentation(),
    sampling: Sampling = Sampling(),
    engine: Engine = Engine(),
) -> MethodOutput:
    """Kernel SHAP over superpixels.

    Args:
        n_samples: the most sampled coalitions (all of them with ``converge=None``).

    Shape:
        map (B, H, W): each pixel carries its segment's Shapley value. Diagnostics per image:
        ``segments``, ``segment_weights`` (phi), ``base_value`` (score with all hidden),
        ``n_samples``, ``stability``, ``reliability`` (as for :func:`rise`).
    """
    if n_samples < 1 or sampling.check_every < 1:
        raise InputError("kernel_shap needs n_samples >= 1 and check_every >= 1")
    run = engine.start(ctx, n_evals=n_samples, desc="kernel_shap")

    def fit(img: SegmentFit, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if "f0" not in img.cache:  # the constraint's ends: score(image), score(all hidden)
            with torch.no_grad():
                img.cache["fx"] = float(run.clean_score(img.index, sampling.score))
                img.cache["f0"] = float(img.score(run.predict(img.hidden[None]))[0])
        return shap_solve(z, y, img.cache["f0"], img.cache["fx"])

    fits = fit_segments(run, ctx, segments.segmentation, segments.options, segments.hide, sampling.score,
                        n_samples, sampling.check_every, sampling.converge,
                        draw=lambda d, g: shapley_samples(n_samples, d, g)[0], fit=fit)
    return run.output([f.result.to(f.seg.device)[f.seg] for f in fits],
                      segments=torch.stack([f.seg.cpu() for f in fits]),
                      segment_weights=[f.result.tolist() for f in fits],
                      base_value=[f.cache["f0"] for f in fits],
                      n_samples=[f.n_samples for f in fits], stability=[f.stability for f in fits],
                      reliability=[f.reliability for f in fits])
