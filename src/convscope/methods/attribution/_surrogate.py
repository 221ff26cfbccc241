"""The sampled estimators' shared pieces: one sample-fit-converge loop (:func:`until_stable`)
for LIME (images and text), Kernel SHAP and RISE, which also predicts the run-to-run agreement
from the estimates of the even and the odd samples (:func:`split_fit` makes them); LIME's
kernel (:func:`lime_weights`), the weighted ridge fit (:func:`weighted_ridge`) and the Kernel
SHAP solver (:func:`shap_solve`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from convscope.core.errors import InputError
from convscope.core.validate import ints, reals
from convscope.engines.perturb import Convergence

__all__ = ["CONVERGE_RANGES", "RULES", "lime_weights", "pair_halves", "ranks", "shap_solve", "split_fit",
           "until_stable", "weighted_ridge"]

#: the stopping rules of :func:`until_stable`
RULES = ("successive", "split_half")

#: registry ranges of the stopping rule's options (0 for ``converge``: use every sample)
CONVERGE_RANGES = {"converge": reals(0, 1, hi_open=True), "check_every": ints(1)}

E = TypeVar("E")


def until_stable(
    n: int,
    check_every: int,
    converge: float | None,
    step: Callable[[int, int], E],
    *,
    estimate: Callable[[E], torch.Tensor],
    halves: Callable[[E], tuple[torch.Tensor, torch.Tensor]],
    first: int = 2,
    rule: str = "successive",
) -> tuple[E, int, Convergence]:
    """Draw samples in rounds until the estimate is stable or ``n`` samples are used.

    Args:
        n: the most samples.
        check_every: samples per round (one stability check per round).
        converge: the tolerance (``None`` or 0: run all ``n``): with ``rule="successive"`` the
            tolerance of :class:`~convscope.engines.perturb.Convergence` (stop once two successive
            estimates correlate at ``1 - converge``); with ``rule="split_half"`` stop once the
            predicted run-to-run correlation (``Convergence.reliability``, from ``halves``)
            reaches ``1 - converge``.
        step: ``step(start, stop)`` evaluates samples ``start .. stop-1`` and returns the
            estimate from samples ``0 .. stop-1``.
        estimate: the tensor of a step's result whose change between checks is the stopping rule.
        halves: the estimates of a step's result from its even and its odd samples, whose
            agreement predicts the run-to-run correlation (``Convergence.reliability``).
        first: no check before this many samples.
        rule: ``"successive"`` or ``"split_half"`` (above).

    Returns:
        (the last step's result, samples used, the convergence record).
    """
    if n < 1 or check_every < 1:
        raise InputError(f"need at least one sample and check_every >= 1, got {n} and {check_every}")
    if rule not in RULES:
        raise InputError(f"unknown stopping rule {rule!r}; use one of {', '.join(RULES)}")
    split = rule == "split_half"
    conv = Convergence(None if split else converge)
    target = 1 - (converge or 1)  # split_half: the reliability to reach (converge 0/None: never)
    done = 0
    out: Any = None
    while done < n:
        stop = min(n, done + check_every)
        out = step(done, stop)
        done = stop
        if done >= first:
            stable = conv.update(estimate(out), halves(out))
            if split and converge:
                stable = conv.converged = conv.reliability >= target
            if stable and done < n:
                break
    return out, done, conv


def ranks(t: torch.Tensor) -> torch.Tensor:
    """Ranks of a 1-D tensor (ties averaged), so that a Pearson correlation of ranks is
    Spearman's rank correlation."""
    from scipy.stats import rankdata  # type: ignore[import-untyped]

    return torch.from_numpy(rankdata(t.detach().cpu().double().numpy()))


def split_fit(fit: Callable[..., E], *data: torch.Tensor,
              halves: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[E, E, E]:
    """``fit`` on all samples, on the even ones and on the odd ones (the halves of
    :func:`until_stable`).

    Args:
        fit: ``fit(*data)`` -> an estimate.
        *data: per-sample tensors (coalitions, scores, weights), split alike along dim 0.
        halves: the sample indices of the two halves instead of even / odd (e.g. whole
            complementary pairs, :func:`pair_halves`).
    """
    if halves is None:
        return fit(*data), fit(*(d[0::2] for d in data)), fit(*(d[1::2] for d in data))
    return fit(*data), fit(*(d[halves[0]] for d in data)), fit(*(d[halves[1]] for d in data))


def pair_halves(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The halves of :func:`._sampling.lime_image_samples`' first ``n`` samples: the first
    sample (all shown, not random) in both, and the complementary pairs ``(2i + 1, 2i + 2)``
    alternately in one and the other, so that no pair is split."""
    i = torch.arange(1, n)
    pair = (i - 1) // 2
    zero = torch.zeros(1, dtype=torch.long)
    return torch.cat([zero, i[pair % 2 == 0]]), torch.cat([zero, i[pair % 2 == 1]])


def lime_weights(z: torch.Tensor, kernel_width: float, scale: float = 1.0) -> torch.Tensor:
    """LIME's sample weights ``sqrt(exp(-(scale D)^2 / width^2))`` with ``D`` the cosine distance
    of each sample to the all-present one (the lime package's kernel; ``scale=100`` for text).

    Shape:
        z (n, d) in {0, 1} -> (n,).
    """
    d = z.shape[1]
    dist = scale * (1 - z.sum(1) / (z.norm(dim=1).clamp(min=1e-12) * d**0.5))
    return torch.sqrt(torch.exp(-(dist**2) / kernel_width**2))


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 1.0
) -> tuple[torch.Tensor, float, float]:
    """Weighted ridge regression with an unpenalised intercept (as scikit-learn's ``Ridge`` with
    ``sample_weight``), solved in closed form.

    Shape:
        z (n, d), y (n,), w (n,) -> (coef (d,), intercept, weighted R^2 of the fit).
    """
    z64, y64, w64 = z.double(), y.double(), w.double()
    sw = w64.sum().clamp(min=1e-300)
    zm = (w64[:, None] * z64).sum(0) / sw
    ym = (w64 * y64).sum() / sw
    zc, yc = z64 - zm, y64 - ym
    a = zc.T @ (w64[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=torch.float64)
    # least squares, not solve: with alpha = 0 and fewer samples than features ``a`` is singular
    coef = torch.linalg.lstsq(a, (zc.T @ (w64 * yc))[:, None]).solution[:, 0]
    intercept = float(ym - zm @ coef)
    pred = z64 @ coef + intercept
    ss_res = (w64 * (y64 - pred) ** 2).sum()
    ss_tot = (w64 * (y64 - ym) ** 2).sum()
    r2 = float(1 - ss_res / ss_tot) if ss_tot > 0 else 1.0
    return coef.float(), intercept, r2


def shap_solve(z: torch.Tensor, y: torch.Tensor, f0: float, fx: float) -> torch.Tensor:
    """Least squares ``y - f0 ~ z . phi`` with ``sum(phi) = fx - f0`` (eliminating the last
    feature), the Kernel SHAP estimator for samples drawn from the Shapley kernel.

    Shape:
        z (n, d), y (n,) -> phi (d,).
    """
    d = z.shape[1]
    total = fx - f0
    if d == 1:
        return torch.tensor([total])
    z64, y64 = z.double(), y.double()
    yt = y64 - f0 - z64[:, -1] * total
    xt = z64[:, :-1] - z64[:, -1:]
    a = xt.T @ xt + 1e-9 * torch.eye(d - 1, dtype=torch.float64)
    phi = torch.linalg.solve(a, xt.T @ yt)
    return torch.cat([phi, (total - phi.sum()).view(1)]).float()
