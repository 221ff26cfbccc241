"""Robustness metrics: does the explanation stay put when the input barely moves?

Each perturbs the batch ``n_samples`` times, explains every perturbed copy in one call (the method
batches them) with the explained class held fixed, and compares the maps. Perturbations are in
model space; pass ``noise=`` (an (n, B, C, H, W) tensor) to use given draws, e.g. Quantus's.
**Lower is better** for all of them.

* :func:`max_sensitivity` and :func:`avg_sensitivity` (Yeh et al., "On the (In)fidelity and
  Sensitivity of Explanations", NeurIPS 2019): ``||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2`` with
  ``d`` uniform in the L-infinity ball of ``radius``; the maximum, or the mean, over the draws.
* :func:`relative_stability`: relative input, representation and output stability (Agarwal et
  al. 2022).
* :func:`continuity` (Montavon, Samek and Müller, "Methods for Interpreting and Understanding Deep
  Neural Networks", Digital Signal Processing 2018): ``max_{x'} ||Phi(x) - Phi(x')||_1 /
  ||x - x'||_2`` over horizontal translations ``x'`` of the input (Quantus's schedule).
* :func:`local_lipschitz_estimate` (Alvarez-Melis and Jaakkola, "On the Robustness of
  Interpretability Methods", ICML-W 2018): ``max_d ||Phi(x + d) - Phi(x)||_2 / ||d||_2`` with
  Gaussian ``d`` of standard deviation ``std``.

Quantus 0.6.0 draws its noise from NumPy's global generator and (for the Lipschitz estimate)
divides every map of the batch by the batch's largest value by default; given the same draws and
``normalise=False`` it agrees with these to float precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from convscope.core.validate import check_values, ints, option_group, reals, shows_options
from convscope.methods.evaluation._options import Perturbations, check_ranges
from convscope.methods.evaluation._prep import metric_baseline
from convscope.methods.evaluation.sensitivity import (
    explained_perturbations,
    max_sensitivity,
    perturbed_maps,
    relative_changes,
    seeded_noise,
)
from convscope.models import LoadedModel, as_loaded

__all__ = [
    "avg_sensitivity", "consistency", "continuity", "layer_outputs",
    "local_lipschitz_estimate", "max_sensitivity",
    "relative_stability",
]

Model = str | nn.Module | LoadedModel
Explainer = str | Callable[..., torch.Tensor]


@shows_options(Perturbations)
def avg_sensitivity(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    radius: float = 0.1,
    **options: Any,
) -> torch.Tensor:
    """(B,) average sensitivity: the mean over ``n_samples`` uniform draws (radius ``radius``,
    default 0.1 model-space units) of ``||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2``; lower is better.
    Options as :func:`max_sensitivity`."""
    o = option_group(Perturbations, "avg_sensitivity", options)
    return relative_changes(model, x, explainer, radius, o).mean(0).float()


@shows_options(Perturbations)
def local_lipschitz_estimate(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    std: float = 0.1,
    **options: Any,
) -> torch.Tensor:
    """(B,) ``max_d ||Phi(x + d) - Phi(x)||_2 / (||d||_2 + 1e-10)`` over ``n_samples`` Gaussian
    draws of standard deviation ``std`` (default 0.1, Quantus's); lower is better.

    Args:
        explainer: a method name or an explainer ``f(lm, x, targets) -> maps``.
        **options: ``targets``, ``n_samples``, ``maps``, ``seed``, ``batch_size``, ``noise``: as
            for :func:`max_sensitivity`.
    """
    o = option_group(Perturbations, "local_lipschitz_estimate", options)
    check_ranges(std=std)
    draw = seeded_noise(o.n_samples, o.seed, "gaussian", std=std) if o.noise is None else o.noise
    d, m0, mp = explained_perturbations(model, x, explainer, draw, o)
    return ((mp - m0[None]).norm(dim=-1) / (d.norm(dim=-1) + 1e-10)).amax(0).float()




def _relative(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """``||(a - b) / a||_2`` over the last axis, ``a`` set to ``eps`` where it is 0 (Agarwal et al.)."""
    return ((a - b) / torch.where(a == 0, torch.full_like(a, eps), a)).norm(dim=-1)


@shows_options(Perturbations)
def relative_stability(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    kind: str = "input",
    layer: str | None = None,
    low: float = 0.02,
    high: float = 0.2,
    eps: float = 1e-6,
    **options: Any,
) -> torch.Tensor:
    """(B,) relative input (``kind="input"``), representation (``"representation"``) or output
    (``"output"``) stability (Agarwal et al., "Rethinking Stability for Attribution-based
    Explanations", ICLR-W 2022); lower is better.

    ``RIS = max_{x'} ||(e_x - e_x') / e_x|| / max(||(x - x') / x||, eps)`` and ``ROS`` with the
    logits ``h`` in the denominator, ``||(h_x - h_x') / h_x||``; zeros in a divisor count as
    ``eps`` (1e-6). The maximum runs over the draws ``x' = x + d`` (``d`` uniform in
    [``low``, ``high``], Quantus's defaults 0.02 and 0.2) that keep the predicted class, as the
    paper requires (NaN when none does). Quantus 0.6.0 returns NaN as soon as one draw changes the
    class; given the same draws where none does, its RIS agrees. Its ROS divides by the absolute
    logit change ``||h_x - h_x'||``, not the relative one of the paper's eq. 5; this follows the
    paper (tested by hand). ``RRS`` has the flattened output of ``layer`` (default: the model's
    default layer, ``lm.default_layer``, or else the last layer with a spatial map) in the
    denominator, ``||(L_x - L_x') / L_x||``; Quantus's default concatenates the outputs of every
    module, a choice the paper does not make; given one layer and the same draws it agrees.
    ``targets``, ``n_samples``, ``maps``, ``seed``, ``batch_size``, ``noise``: as for
    :func:`max_sensitivity`.
    """
    from convscope.core.errors import InputError
    from convscope.models.forward import chunked_outputs

    if kind not in ("input", "representation", "output"):
        raise InputError(f"unknown stability {kind!r}; use 'input', 'representation' or 'output'")
    o = option_group(Perturbations, "relative_stability", options)
    check_values(low=(low, reals()), high=(high, reals()), eps=(eps, reals(0, lo_open=True)))
    if not low < high:
        raise InputError(f"low must be below high, got {low} and {high}")
    batch_size = o.batch_size

    draw = seeded_noise(o.n_samples, o.seed, low=low, high=high) if o.noise is None else o.noise
    d, m0, mp = explained_perturbations(model, x, explainer, draw, o)
    net = as_loaded(model).model
    n, b = d.shape[:2]
    x0 = x.detach().cpu().double().reshape(b, -1)
    xp = x0[None] + d
    with torch.no_grad():
        h0 = chunked_outputs(net, x.detach(), batch_size).double().cpu()
        hp = chunked_outputs(net, xp.reshape(n * b, *x.shape[1:]).to(x.device, x.dtype),
                             batch_size).double().cpu().view(n, b, -1)
    num = _relative(m0[None].expand_as(mp), mp, eps)
    if kind == "input":
        den = _relative(x0[None].expand_as(xp), xp, eps)
    elif kind == "output":
        den = _relative(h0[None].expand_as(hp), hp, eps)
    else:
        from convscope.models.forward import find_default_layer

        lm = as_loaded(model)
        name = layer if layer is not None else lm.default_layer or find_default_layer(net, lm.preprocessing)
        l0 = layer_outputs(net, x.detach(), name, batch_size)
        lp = layer_outputs(net, xp.reshape(n * b, *x.shape[1:]).to(x.device, x.dtype), name,
                           batch_size).view(n, b, -1)
        den = _relative(l0[None].expand_as(lp), lp, eps)
    ratio = num / den.clamp(min=eps)
    ratio = torch.where(hp.argmax(-1) == h0.argmax(-1)[None], ratio, torch.full_like(ratio, float("nan")))
    return torch.nan_to_num(ratio, nan=-torch.inf).amax(0).where(~ratio.isnan().all(0),
                                                                   torch.tensor(float("nan"))).float()


def layer_outputs(net: nn.Module, x: torch.Tensor, layer: str | None, batch_size: int) -> torch.Tensor:
    """(B, D) the flattened output of ``layer`` on ``x`` (float64, CPU), in chunks of ``batch_size``.

    Raises:
        InputError: no layer named (a model without a default layer).
    """
    from convscope.core.errors import InputError
    from convscope.core.hooks import capture

    if layer is None:
        raise InputError("this model has no layer with a spatial map to use by default; pass layer=... "
                         "(a name from convscope layers)")
    out = []
    with capture(net, layer) as cap:
        for i in range(0, x.shape[0], batch_size):
            cap.reset()
            cap.run(x[i:i + batch_size], stop_after=[layer])  # the layers above it need not run
            out.append(cap.activation(layer).detach().double().cpu().flatten(1))
    return torch.cat(out)


def continuity(
    model: Model,
    x: torch.Tensor,
    explainer: Explainer,
    *,
    targets: Any = None,
    n_steps: int = 28,
    baseline: Any = "black",
    maps: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> torch.Tensor:
    """(B,) continuity: ``max_s ||Phi(x) - Phi(T_s x)||_1 / (||x - T_s x||_2 + 1e-9)`` over
    ``n_steps`` horizontal translations ``T_s`` by ``s = -W + k dx`` pixels (``k = 1..n_steps``,
    ``dx = (2W + 1) // n_steps``, Quantus's schedule), the uncovered columns filled with
    ``baseline`` (default ``"black"``; ``"min"`` is Quantus's ``"black"``); the explained class
    held fixed; lower is better.

    Quantus 0.6.0 gets ``dx = 0`` on images narrower than ``n_steps / 2`` and then never moves the
    image (every ratio 0); here ``dx`` is at least 1.
    """
    check_values(n_steps=(n_steps, ints(1, 10_000)))
    lm = as_loaded(model)
    xd = x.detach()
    base = metric_baseline(xd, baseline, lm)
    w = x.shape[-1]
    dx = max(1, (2 * w + 1) // n_steps)
    shifted = []
    for k in range(1, n_steps + 1):
        s = -w + k * dx
        col = torch.arange(w, device=xd.device) - s  # the source column of each column
        ok = (col >= 0) & (col < w)
        src = xd[..., col.clamp(0, w - 1)]
        shifted.append(torch.where(ok, src, base) - xd)
    d, m0, mp = perturbed_maps(lm, xd, explainer, torch.stack(shifted).cpu(), targets=targets, maps=maps,
                               seed=seed, batch_size=batch_size)
    return ((mp - m0[None]).abs().sum(-1) / (d.norm(dim=-1) + 1e-9)).amax(0).float()


def consistency(maps: torch.Tensor, predictions: torch.Tensor, n: int = 5, *, seed: int = 0) -> torch.Tensor:
    """(B,) consistency (Dasgupta, Frost and Moshkovitz, "Framework for Evaluating Faithfulness of
    Local Explanations", ICML 2022): among the *other* images whose explanation is the same, the
    share predicted as the same class; **higher is better**, NaN where no other image shares the
    explanation. An explanation is discretised as the set of its ``n`` highest-attributed pixels.

    Quantus 0.6.0 discretises with the signs of the *first* ``n`` entries of the flattened map
    (array order, not the top ``n``), which compares image corners; this follows the paper's
    reading of an explanation as its selected features (tested by hand).

    Shape:
        maps (B, H, W), predictions (B,) -> (B,).
    """
    from convscope.methods.evaluation._prep import check_finite
    from convscope.methods.evaluation.curves import pixel_ranks

    m = check_finite(maps).detach().flatten(1)
    check_values(n=(n, ints(1, m.shape[1])))
    top = pixel_ranks(m, "most", seed) < n  # (B, N): the selected pixels
    same_expl = (top[:, None] == top[None]).all(-1)
    p = torch.as_tensor(predictions).reshape(-1).to(same_expl.device)
    same_expl.fill_diagonal_(False)
    agree = (same_expl & (p[:, None] == p[None])).sum(1).double()
    count = same_expl.sum(1).double()
    return torch.where(count > 0, agree / count.clamp(min=1), torch.full_like(count, float("nan"))).float()
