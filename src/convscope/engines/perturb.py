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
They stay importable from here.

Everything random takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.core.errors import InputError, MethodError
from convscope.core.progress import Progress, current
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

#: names that moved to the methods' modules, still importable from here (PEP 562)
_MOVED = {"window_boxes": "occlusion", "box_masks": "occlusion", "rise_masks": "_sampling",
          "coalition_samples": "_sampling", "shapley_samples": "_sampling", "weighted_ridge": "_surrogate"}

#: Default memory budget of ``batch_size="auto"`` on a CPU, in MiB (override with
#: ``CONVSCOPE_PERTURB_BUDGET_MB``). On CUDA a quarter of the free memory is used.
CPU_BUDGET_MB = 256
MAX_AUTO_BATCH = 256
#: ... and never more than this many inputs per chunk on a CPU: larger chunks run slower per
#: input there (cache misses; one thread: digits-cnn 1.2 / 1.3 / 1.8 ms per input at 16 / 64 /
#: 256, resnet18 at 112 px 32 / 33 / 37 ms), while a GPU wants large chunks.
CPU_MAX_AUTO_BATCH = 64


def _is_onnx_session(obj: Any) -> bool:
    return hasattr(obj, "run") and hasattr(obj, "get_inputs") and not isinstance(obj, nn.Module)


def is_black_box(obj: Any) -> bool:
    """True for a prediction function that is not a torch module: a callable or an ONNX session."""
    from convscope.models import LoadedModel

    if isinstance(obj, (str, os.PathLike, nn.Module, LoadedModel)):
        return False
    return callable(obj) or _is_onnx_session(obj)


class Predictor:
    """``predict(batch) -> scores`` around a torch module, NumPy function or ONNX session.

    Args:
        fn: the model.
        kind: ``"auto"`` (module -> torch, ONNX session -> onnx, other callables: tried with a
            tensor first and, if that fails with a type error, with a NumPy array), ``"torch"``,
            ``"numpy"`` or ``"onnx"``.
        channels_last: torch modules only. Run in ``torch.channels_last`` memory format: every
            4-D parameter and buffer is converted while the predictor runs (one conversion per
            :func:`evaluate` call, or per direct call) and put back exactly as it was on exit,
            errors included (:func:`convscope.core.hooks.state_guard` with ``memory_format``); 4-D
            inputs are converted too. Same results up to float rounding.
        compile: torch modules only. ``True`` runs the module through ``torch.compile`` (a
            wrapper of its ``__call__``; the module object itself is not changed, where
            ``torch.compile(module)`` would set an attribute on it); a string or callable names the
            ``torch.compile`` backend (``"inductor"``, ``"eager"``, ...). The first passes pay the
            compilation (and one more for a new batch shape). If compiling or running the compiled
            wrapper fails (no C compiler, an unsupported model), the predictor warns once and
            runs the module eagerly from then on: a speed option never fails an explanation.

    Raises:
        InputError: ``channels_last`` or ``compile`` for a black box (a NumPy function, an ONNX
            session or a plain callable): they need a torch module.

    Shape:
        batch (n, C, H, W) float tensor -> (n, K) float tensor on the batch's device.
    """

    def __init__(self, fn: Any, kind: str = "auto", *, channels_last: bool = False,
                 compile: bool | str | Callable[..., Any] = False) -> None:
        if isinstance(fn, Predictor):
            channels_last = channels_last or fn.channels_last  # type: ignore[has-type]
            compile = compile or fn.compile  # type: ignore[has-type]
            fn, kind = fn.fn, fn.kind  # type: ignore[has-type]
        if kind == "auto":
            if isinstance(fn, nn.Module):
                kind = "torch"
            elif _is_onnx_session(fn):
                kind = "onnx"
            elif callable(fn):
                kind = "callable"  # decided on the first call
            else:
                raise InputError(
                    f"cannot use a {type(fn).__name__} as a model: pass an nn.Module, a function "
                    "predict(batch) -> scores or an onnxruntime.InferenceSession"
                )
        if kind not in ("torch", "numpy", "onnx", "callable"):
            raise InputError(f"unknown predictor kind {kind!r}; use auto, torch, numpy or onnx")
        if (channels_last or compile is not False) and not isinstance(fn, nn.Module):
            what = {"onnx": "an ONNX session", "numpy": "a NumPy function"}.get(kind, "a black-box function")
            opts = " and ".join(o for o, on in (("channels_last", channels_last),
                                                 ("compile", compile is not False)) if on)
            raise InputError(
                f"{opts} need(s) a torch nn.Module, but the model is {what}; drop the option(s) "
                "or pass the torch model"
            )
        if compile is not False and not (compile is True or isinstance(compile, str) or callable(compile)):
            raise InputError(f"compile must be True, False, a backend name or a backend callable, "
                             f"got {compile!r}")
        self.fn = fn
        self.kind = kind
        self.channels_last = bool(channels_last)
        self.compile = compile
        self._onnx_input: str | None = None
        self._compiled: Callable[..., Any] | None = None
        self._compile_failed = False
        self._prepared = False

    @property
    def module(self) -> nn.Module | None:
        """The torch module, if the predictor wraps one."""
        return self.fn if isinstance(self.fn, nn.Module) else None

    @contextmanager
    def prepared(self) -> Iterator[None]:
        """Hold the module in the engine's memory format for the block (no-op without
        ``channels_last``; re-entrant). Every parameter and buffer is restored on exit."""
        module = self.module
        if not self.channels_last or self._prepared or module is None:
            yield
            return
        from convscope.core.hooks import state_guard

        self._prepared = True
        try:
            with state_guard(module, eval_mode=False, freeze=False, memory_format=torch.channels_last):
                yield
        finally:
            self._prepared = False

    def _fallback(self, exc: BaseException) -> None:
        self._compiled = None
        self._compile_failed = True
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"torch.compile failed ({type(exc).__name__}: {first}); running the model eagerly",
            RuntimeWarning, stacklevel=3,
        )

    def _torch(self, batch: torch.Tensor, *extra: Any) -> Any:
        if self.channels_last:
            cl = [
                v.contiguous(memory_format=torch.channels_last)
                if isinstance(v, torch.Tensor) and v.ndim == 4 else v
                for v in (batch, *extra)
            ]
            batch, extra = cl[0], tuple(cl[1:])
        if self.compile is not False and not self._compile_failed:
            if self._compiled is None:
                # Compile the bound ``__call__`` (what torch.compile(module) wraps too): compiling
                # the module itself would set an attribute on the caller's module object.
                kw: dict[str, Any] = {} if self.compile is True else {"backend": self.compile}
                try:
                    self._compiled = torch.compile(self.fn.__call__, **kw)
                except Exception as exc:  # no compiler, unsupported Python, unknown backend
                    self._fallback(exc)
            if self._compiled is not None:
                try:
                    with torch.no_grad():
                        return self._compiled(batch, *extra)
                except Exception as exc:  # compilation happens on the first call: fall back
                    self._fallback(exc)
        with torch.no_grad():
            return self.fn(batch, *extra)

    def _numpy(self, batch: torch.Tensor) -> torch.Tensor:
        arr = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        if self.kind == "onnx":
            if self._onnx_input is None:
                self._onnx_input = self.fn.get_inputs()[0].name
            out = self.fn.run(None, {self._onnx_input: arr})[0]
        else:
            out = self.fn(arr)
        return torch.as_tensor(np.asarray(out), dtype=torch.float32).to(batch.device)

    def __call__(self, batch: torch.Tensor, *extra: Any) -> torch.Tensor:
        """Outputs for ``batch``; ``extra`` arguments go to a torch module after it (e.g. the
        side inputs of a network tail), never to a black box."""
        if extra and self.kind != "torch":
            raise InputError("extra predictor arguments need a torch module")
        if self.kind in ("numpy", "onnx"):
            out = self._numpy(batch)
        elif self.kind == "torch":
            with self.prepared():
                out = self._torch(batch, *extra)
        else:  # a plain callable: tensor in if it takes one, else NumPy
            try:
                with torch.no_grad():
                    out = self.fn(batch)
            except Exception as exc:  # maybe a NumPy function: try an array before giving up
                try:
                    out = self._numpy(batch)
                except Exception:
                    raise exc from None
                self.kind = "numpy"
            else:
                self.kind = "torch"
        if isinstance(out, np.ndarray):
            out = torch.as_tensor(out, dtype=torch.float32).to(batch.device)
        if not isinstance(out, torch.Tensor):
            raise MethodError(
                f"predict returned {type(out).__name__}; expected an (n, classes) tensor or array"
            )
        if out.ndim == 1:
            out = out[:, None]
        return out


def as_predict(model: Any, kind: str = "auto", *, channels_last: bool = False,
               compile: bool | str | Callable[..., Any] = False) -> Predictor:
    """Wrap ``model`` as a :class:`Predictor` (see there for ``channels_last`` and ``compile``)."""
    return Predictor(model, kind, channels_last=channels_last, compile=compile)


class BlackBoxModel(nn.Module):
    """An ``nn.Module`` face for a black-box predictor, so the facade can treat it like a model.

    It has no parameters and no layers; methods that need gradients or layers are refused before
    it is ever built (see :func:`convscope.explain`).
    """

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.predictor = as_predict(fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)


def _leaf_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def auto_batch_size(
    predict: Predictor | nn.Module | Callable[[torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    *,
    budget_mb: float | None = None,
    limit: int | None = None,
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


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"convscope.methods.attribution.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
