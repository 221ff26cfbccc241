"""The batched perturbation engine: evaluate a model on many masked versions of one input.

Occlusion, RISE, LIME, Kernel SHAP, Score-CAM and Ablation-CAM all reduce to "build masks, mix
the input with a baseline under each mask, run the model, keep the target score". This module
does that once:

* :func:`as_predict` turns a torch module, a NumPy function ``f(np.ndarray) -> np.ndarray`` or an
  ONNX Runtime ``InferenceSession`` (extra ``onnx``, imported lazily) into one
  ``predict(batch: Tensor) -> Tensor`` callable (:class:`Predictor`). For a torch module it
  has two opt-in speed options, ``channels_last`` and ``compile`` (see :class:`Predictor`); every
  perturbation method passes them through, so they live here once.
* :func:`evaluate` walks a virtual batch of ``n`` perturbed inputs in chunks: the caller's
  ``make(start, stop)`` builds one chunk as a tensor (masks are tensors, mixing is one
  ``torch.where`` / multiply-add), the model runs on it, a score function reduces the outputs,
  and only the (n,) scores are kept. Memory is set by the chunk size, not by ``n``.
  ``batch_size="auto"`` sizes chunks to a memory budget (:func:`auto_batch_size`). A progress bar
  shows on long runs (:mod:`convscope.core.progress`; inside a longer job, a sub-status of its bar).
  No per-sample Python loop and, for torch models, no NumPy round trip.
* :func:`baseline` (from :mod:`convscope.models.inputs`), the one baseline vocabulary.
* :class:`Convergence`: stop sampling once the explanation stops changing
  (:data:`DEFAULT_CONVERGE` is the sampling methods' default rule).

The methods' own pieces live with them: :func:`window_boxes` and :func:`box_masks` in
:mod:`convscope.methods.attribution.occlusion`, :func:`rise_masks`, :func:`coalition_samples` and
:func:`shapley_samples` in :mod:`convscope.methods.attribution._sampling`, :func:`weighted_ridge` and the
shared sample-fit-converge loop in :mod:`convscope.methods.attribution._surrogate`, the per-run scaffold
(predictor, clean pass, scorer, the four engine options) in :mod:`convscope.methods.attribution._engine`.

Everything random takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.progress import Progress, current
from convscope.models.blackbox import BlackBoxModel, Predictor, as_predict, is_black_box  # re-exported
from convscope.models.inputs import baseline  # the one baseline vocabulary (pixel space), re-exported

__all__ = [
    "DEFAULT_CONVERGE",
    "BlackBoxModel",
    "Convergence",
    "Predictor",
    "as_predict",
    "auto_batch_size",
    "baseline",
    "evaluate",
    "is_black_box",
]

#: The default stopping rule of RISE, Kernel SHAP and LIME for text: every ``check_every``
#: samples, stop once the estimate correlates with the previous check's at ``1 - 0.01`` or more
#: (:class:`Convergence`); ``n_samples`` is then the maximum. ``converge=None`` (or 0) runs all
#: ``n_samples``. LIME for images stops on its split-half rank rule instead
#: (:data:`convscope.methods.attribution.lime.LIME_CONVERGE`).
DEFAULT_CONVERGE = 0.01

#: Default memory budget of ``batch_size="auto"`` on a CPU, in MiB (override with
#: ``CONVSCOPE_PERTURB_BUDGET_MB``). On CUDA a quarter of the free memory is used.
CPU_BUDGET_MB = 256
MAX_AUTO_BATCH = 256
#: ... and never more than this many inputs per chunk on a CPU: larger chunks run slower per
#: input there (cache misses; one thread: digits-cnn 1.2 / 1.3 / 1.8 ms per input at 16 / 64 /
#: 256, resnet18 at 112 px 32 / 33 / 37 ms), while a GPU wants large chunks.
CPU_MAX_AUTO_BATCH = 64


def _leaf_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def auto_batch_size(
    predict: Predictor | nn.Module | Callable[[torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    *,
    budget_mb: float | None = None,
    limit: int | None = None,
    cost: Callable[[int], int] | None = None,
) -> int:
    """A chunk size whose activations fit a memory budget.

    For a torch module the per-sample memory is measured once: the bytes of every leaf module's
    output on one sample (an upper bound on what a no-grad forward pass keeps alive); at most
    :data:`MAX_AUTO_BATCH` on a GPU, :data:`CPU_MAX_AUTO_BATCH` on a CPU. Black boxes get
    ``min(limit, 64)``.

    Args:
        predict: the model.
        sample: (1, C, H, W) one input.
        budget_mb: the budget (default: ``CONVSCOPE_PERTURB_BUDGET_MB`` or 256 MiB on CPU, a
            quarter of the free memory on CUDA).
        limit: never more than this (e.g. the number of inputs to evaluate).
        cost: ``cost(leaf_bytes) -> bytes``: what one sample costs a caller that keeps more than a
            no-grad pass's outputs (an autograd graph, tensors its hooks keep), called after the
            probe pass with the bytes measured there (default: those bytes).
    """
    module = predict.module if isinstance(predict, Predictor) else (
        predict if isinstance(predict, nn.Module) else None
    )
    most = MAX_AUTO_BATCH if sample.is_cuda else CPU_MAX_AUTO_BATCH
    cap = most if limit is None else max(1, min(most, int(limit)))
    if module is None:
        return min(cap, 64)
    if budget_mb is None:
        env = os.environ.get("CONVSCOPE_PERTURB_BUDGET_MB")
        if env:
            budget_mb = float(env)
        elif sample.is_cuda:
            free, _total = torch.cuda.mem_get_info(sample.device)
            budget_mb = free / 4 / 2**20
        else:
            budget_mb = CPU_BUDGET_MB
    from convscope.core.hooks import capture

    leaves = _leaf_names(module)
    per_sample = sample[:1].numel() * sample.element_size()
    with capture(module, leaves or None, clone=False) as cap_:
        with torch.no_grad():
            module(sample[:1])
        for name in leaves:
            for out in cap_.outputs(name):
                if isinstance(out, torch.Tensor):
                    per_sample += out.numel() * out.element_size()
        if cost is not None:
            per_sample = int(cost(per_sample))
    return max(1, min(cap, int(budget_mb * 2**20 // max(per_sample, 1))))


def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor],
    make: Callable[[int, int], torch.Tensor],
    n: int,
    score: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int | str = "auto",
    sample: torch.Tensor | None = None,
    progress: bool | None = None,
    desc: str = "perturb",
) -> torch.Tensor:
    """Scores of ``n`` perturbed inputs, built and evaluated chunk by chunk.

    Args:
        predict: ``predict(batch) -> outputs`` (a :class:`Predictor`, a module or a function).
            A :class:`Predictor` with ``channels_last`` holds the module in that format for the
            whole call (:meth:`Predictor.prepared`), not once per chunk.
        make: ``make(start, stop)`` returns perturbed inputs ``start .. stop-1`` as one tensor.
        n: how many perturbed inputs there are.
        score: reduces a chunk's outputs (b, K) to its scores (b,) (or (b, m)).
        batch_size: chunk size, or ``"auto"`` (:func:`auto_batch_size` on ``sample``).
        sample: one input, for ``"auto"`` (default: ``make(0, 1)``).
        progress: show progress (default: a bar on a terminal for runs of 20 chunks or more;
            inside an active :class:`~convscope.core.progress.Progress`, such as a report's, the
            chunks show as its sub-status rather than as a bar of their own).
        desc: the progress label.

    Shape:
        returns (n,) or (n, m) float32 scores, on the inputs' device.
    """
    if n <= 0:
        raise InputError("nothing to evaluate (n = 0)")
    if batch_size == "auto":
        if sample is None:
            sample = make(0, 1)
        bs = auto_batch_size(predict, sample, limit=n)  # type: ignore[arg-type]
    else:
        bs = int(batch_size)
        if bs < 1:
            raise InputError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    if progress is None and math.ceil(n / bs) < 20 and current() is None:
        progress = False  # a short run on its own: no bar
    bar = Progress(desc, n, enabled=progress, tty_only=True, unit="eval")
    out: torch.Tensor | None = None
    hold = predict.prepared() if isinstance(predict, Predictor) else nullcontext()
    try:
        with hold:
            for start in range(0, n, bs):
                stop = min(n, start + bs)
                with torch.no_grad():
                    s = score(predict(make(start, stop))).detach().float()
                if out is None:
                    out = torch.empty((n, *s.shape[1:]), dtype=torch.float32, device=s.device)
                out[start:stop] = s
                bar.update(stop)
    finally:
        bar.close()
    assert out is not None
    return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flattened tensors (1 for two equal constants, 0 for a constant
    against a varying one)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else (1.0 if float(a.norm()) == float(b.norm()) else 0.0)


class Convergence:
    """Decide when a sampled explanation has stopped changing, and how reproducible it is.

    After each round of samples the caller passes the current estimate; sampling stops when the
    Pearson correlation between the estimates of two successive checks reaches ``1 - tol``
    (``tol=None`` or ``0``: never stop early). Successive estimates share most of their samples,
    so this measures how much the last round changed the estimate, not how much another run
    would differ: the caller may also pass the estimates of two disjoint halves of the samples
    (even and odd draws), whose correlation ``r`` gives, by Spearman-Brown, ``2 r / (1 + r)``:
    the predicted correlation of two independent runs with as many samples (``reliability``).

    Attributes:
        stability: the last correlation of successive estimates (``nan`` before the second check).
        reliability: the last predicted run-to-run correlation (``nan`` without halves).
        converged: whether the threshold was reached.
    """

    def __init__(self, tol: float | None) -> None:
        if tol is not None and not 0 <= tol < 1:
            raise InputError(f"converge must lie in [0, 1) (a tolerance on 1 - correlation; 0 or "
                             f"null: use every sample), got {tol}")
        self.tol = tol or None
        self.prev: torch.Tensor | None = None
        self.stability = float("nan")
        self.reliability = float("nan")
        self.converged = False

    def update(self, estimate: torch.Tensor,
               halves: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
        """Record ``estimate`` (and the estimates of two disjoint halves of its samples); True
        when sampling can stop."""
        if halves is not None:
            r = _corr(*halves)
            self.reliability = 2 * r / (1 + r) if r > -1 else -1.0
        e = estimate.detach().double().flatten()
        if self.prev is not None:
            self.stability = _corr(e, self.prev)
            if self.tol is not None and self.stability >= 1 - self.tol:
                self.converged = True
        self.prev = e
        return self.converged
