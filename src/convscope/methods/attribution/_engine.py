"""The scaffold every perturbation method shares: one :class:`Engine` value built from the four
engine options, and one :class:`Run` per explanation (predictor, clean pass, scorer, chunked
evaluation, what ran).

The four engine options of every perturbation method (``eval_batch_size``, ``progress``,
``channels_last``, ``compile``) are read once into an :class:`Engine`. ``"auto"`` values are
settled when a run starts:

* ``eval_batch_size="auto"``: chunks sized to a memory budget from one probe pass
  (:func:`convscope.engines.perturb.auto_batch_size`), computed once per run.
* ``channels_last="auto"``: for a torch model with 4-D weights and a run of at least
  :data:`PROBE_MIN_EVALS` model inputs, a short timing probe (after a warm-up, three passes of a
  chunk of 8 in each memory format, interleaved; the best of each) picks channels-last when it is
  at least
  :data:`PROBE_GAIN` times faster; the answer is cached per model, input shape and chunk size,
  so later runs do not probe again. Otherwise the default NCHW format.

What actually ran goes to ``diagnostics["engine"]``: ``{"incremental", "channels_last",
"batch_size", "compile"}``. An explicit ``True`` / integer is always obeyed.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.core.errors import InputError
from convscope.core.targets import target_scores
from convscope.core.validate import ints
from convscope.engines.perturb import Predictor, as_predict, auto_batch_size, evaluate
from convscope.methods.attribution._base import MethodContext, MethodOutput
from convscope.methods.attribution._options import with_options
from convscope.methods.attribution._shared import clean_outputs
from convscope.models.inputs import baseline as make_baseline

__all__ = ["AUTO", "AUTO_BASELINES", "ENGINE_CHOICES", "ENGINE_RANGES", "PROBE_GAIN", "PROBE_MIN_EVALS",
           "SCORES", "Engine", "Run", "scorer", "with_engine"]

SCORES = ("raw", "softmax")
#: The baseline option value that picks, per image, the candidate of :data:`AUTO_BASELINES` with
#: the lowest target score (:meth:`Run.baseline`).
AUTO = "auto"
#: The candidates of ``baseline="auto"``, in the order ties are broken.
AUTO_BASELINES = ("grey", "blur", "black", "mean")
#: registry ranges / choices of the engine options, declared once for every perturbation method.
ENGINE_RANGES = {"eval_batch_size": ints(1)}
ENGINE_CHOICES = {"eval_batch_size": ("auto",), "channels_last": ("auto",)}
#: ``channels_last="auto"`` probes only runs of at least this many model inputs (the probe costs
#: 8 passes of a chunk of 8, so a shorter run cannot win it back).
PROBE_MIN_EVALS = 256
#: ... and picks channels-last only when it is at least this much faster than NCHW.
PROBE_GAIN = 1.15
_PROBE_BATCH = 8
_probed: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], bool]] = weakref.WeakKeyDictionary()


def scorer(t: Any, b: int, score: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Target score of image ``b`` from a chunk of outputs: (n, K) -> (n,).

    Args:
        t: the resolved target of the batch.
        b: the image index.
        score: ``"raw"`` (the outputs as they are) or ``"softmax"`` (probabilities). A callable
            target always gets the raw outputs.
    """
    if score not in SCORES:
        raise InputError(f"unknown score {score!r}; use 'raw' (model outputs) or 'softmax'")
    if t.func is not None:
        func = t.func
        return lambda o: target_scores(func, o)
    idx = int(t.indices[b])
    neg = None if t.negative is None else int(t.negative[b])
    if score == "softmax":
        if neg is not None:
            return lambda o: (lambda p: p[:, idx] - p[:, neg])(torch.softmax(o.float(), dim=1))
        return lambda o: torch.softmax(o.float(), dim=1)[:, idx]
    if neg is not None:
        return lambda o: (o[:, idx] - o[:, neg]).float()
    return lambda o: o[:, idx].float()


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def channels_last_pays(module: nn.Module, call: Callable[[Predictor, torch.Tensor], Any],
                       sample: torch.Tensor) -> bool:
    """Whether channels-last runs ``module`` at least :data:`PROBE_GAIN` times faster (a timing
    probe on a chunk of ``sample``; cached per module, shape and device).

    Args:
        module: the torch module the predictor wraps.
        call: ``call(predictor, chunk)`` runs one chunk (e.g. ``lambda p, c: p(c)``).
        sample: (1, ...) one input of the run.
    """
    if sample.ndim != 4 or not any(p.ndim == 4 for p in module.parameters()):
        return False
    key = (tuple(sample.shape[1:]), sample.dtype, str(sample.device))
    cache = _probed.setdefault(module, {})
    if key not in cache:
        chunk = sample[:1].expand(_PROBE_BATCH, *sample.shape[1:]).contiguous()
        preds = [as_predict(module, channels_last=cl) for cl in (False, True)]
        best = [float("inf"), float("inf")]
        for p in preds:  # warm-up (allocator, oneDNN primitive caches)
            with p.prepared():
                call(p, chunk)
        for _ in range(3):  # interleaved, so a load change on a shared machine hits both alike
            for i, p in enumerate(preds):
                with p.prepared():
                    best[i] = min(best[i], _seconds(lambda p=p: call(p, chunk), sample.device))
        cache[key] = best[1] * PROBE_GAIN <= best[0]
    return cache[key]


@dataclass(frozen=True)
class Engine:
    """The four engine options of a perturbation method, as one value.

    Attributes:
        eval_batch_size: perturbed inputs per model pass, or ``"auto"`` (memory budget).
        progress: show a progress bar (``None``: on long runs in a terminal).
        channels_last: ``True``, ``False`` or ``"auto"`` (a timing probe on long runs).
        compile: ``torch.compile`` the module (``True``, a backend name or callable) or not.
    """

    eval_batch_size: int | str = "auto"
    progress: bool | None = None
    channels_last: bool | str = "auto"
    compile: bool | str | Callable[..., Any] = False

    def __post_init__(self) -> None:
        if self.channels_last not in (True, False, "auto"):
            raise InputError(f"channels_last must be true, false or 'auto', got {self.channels_last!r}")
        bs = self.eval_batch_size
        if bs != "auto" and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
            raise InputError(f"eval_batch_size must be a positive integer or 'auto', got {bs!r}")

    @property
    def speed_options(self) -> bool:
        """Whether the caller asked for a speed option explicitly (channels-last or compile)."""
        return self.channels_last is True or self.compile is not False

    def predictor(self, fn: Any, sample: torch.Tensor, n_evals: int,
                  call: Callable[[Predictor, torch.Tensor], Any] | None = None,
                  black_box: bool = False, default_batch: int | None = None) -> tuple[Any, int, bool]:
        """(predictor, chunk size, channels-last) for ``fn`` on inputs like ``sample``.

        Args:
            fn: a torch module, or the black-box predictor of the context.
            sample: (1, ...) one input.
            n_evals: how many inputs the run evaluates (the probes' pay-off rule).
            call: how to run one chunk (default ``predictor(chunk)``).
            black_box: ``fn`` is a black box (speed options are refused, never probed).
            default_batch: the chunk size for ``eval_batch_size="auto"`` instead of the memory
                budget (for callers whose inputs are not images).
        """
        call = call or (lambda p, c: p(c))
        if black_box:
            if self.speed_options:
                as_predict(fn, channels_last=self.channels_last is True, compile=self.compile)  # refuses
            pred = fn
            cl = False
        else:
            cl = self.channels_last is True
            if self.channels_last == "auto" and n_evals >= PROBE_MIN_EVALS and isinstance(fn, nn.Module):
                cl = channels_last_pays(fn, call, sample)
            pred = as_predict(fn, channels_last=cl, compile=self.compile)
        if self.eval_batch_size != "auto":
            bs = int(self.eval_batch_size)
        elif default_batch is not None:
            bs = max(1, min(default_batch, n_evals))
        else:
            bs = auto_batch_size(pred, sample, limit=n_evals)
        return pred, bs, cl

    def start(self, ctx: MethodContext, *, n_evals: int, desc: str,
              logits: torch.Tensor | None = None, **predictor: Any) -> Run:
        """A run over ``ctx``'s images: the predictor, and the clean pass (or ``logits``).

        Args:
            ctx: the method context.
            n_evals: model inputs per image (for the probes).
            desc: the progress bar's label.
            logits: the clean outputs if the caller has them already.
            **predictor: ``fn``, ``sample``, ``call``, ``default_batch`` for :meth:`predictor`
                when the masked inputs are not images through the whole model (default: the
                context's model or black box on its images).
        """
        black = ctx.predict is not None
        fn = predictor.pop("fn", ctx.predict if black else ctx.model)
        sample = predictor.pop("sample", ctx.x[:1])
        whole_model = fn is ctx.model and not black
        pred, bs, cl = self.predictor(fn, sample, n_evals, black_box=black, **predictor)
        if logits is None and whole_model:  # the facade's clean pass, shared with other methods
            logits = clean_outputs(ctx.model, ctx.x, ctx.batch_size)  # type: ignore[arg-type]
        elif logits is None:
            with torch.no_grad():
                logits = torch.cat([pred(ctx.x[r]) for r in ctx.chunks()])
        t = ctx.resolve(logits)
        labels = t.labels() or [None] * ctx.x.shape[0]
        return Run(self, ctx, pred, logits, t, labels, desc, bs, cl)


#: the docstring lines of the engine options, added to each method's ``Args:`` by :func:`with_engine`
_ENGINE_DOCS = """\
        eval_batch_size: perturbed inputs per model pass, or ``"auto"`` (sized to a memory budget
            from one probe pass; incremental occlusion: 64, an Ablation-CAM tail: 256).
        progress: show a progress bar (default: on long runs in a terminal).
        channels_last: run the passes in ``torch.channels_last`` memory format (torch models
            only): ``True``, ``False`` or ``"auto"`` (default: a short timing probe on runs of 256
            inputs or more picks the faster format). Same map up to float rounding.
        compile: ``torch.compile`` the model (``True``, or a backend name or callable); if compiling
            fails the engine warns once and runs eagerly. Same map up to float rounding.
"""


#: Give a method the four engine options as keywords (``eval_batch_size``, ``progress``,
#: ``channels_last``, ``compile``, with :class:`Engine`'s defaults), handed to it as one
#: :class:`Engine` in its ``engine`` parameter (:func:`._options.with_options`).
with_engine = with_options(Engine, "engine", _ENGINE_DOCS,
                           hints={"eval_batch_size": int | str, "progress": bool | None,
                                  "channels_last": bool | str, "compile": bool | str})


@dataclass
class Run:
    """One explanation's engine state (see :meth:`Engine.start`).

    Attributes:
        engine: the options.
        ctx: the method context.
        predict: the predictor the masked inputs go through.
        logits: (B, K) clean outputs.
        target: the resolved target.
        labels: class index per image (``None`` for a callable target).
        desc: progress label.
        batch_size: the chunk size used.
        channels_last: whether the passes run channels-last.
        incremental: whether occlusion ran by incremental inference.
    """

    engine: Engine
    ctx: MethodContext
    predict: Any
    logits: torch.Tensor
    target: Any
    labels: list[int | None]
    desc: str
    batch_size: int
    channels_last: bool
    incremental: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def scorer(self, b: int, score: str = "raw") -> Callable[[torch.Tensor], torch.Tensor]:
        """Target score of image ``b`` (see :func:`scorer`)."""
        return scorer(self.target, b, score)

    def clean_score(self, b: int, score: str = "raw") -> torch.Tensor:
        """The target score of the clean image ``b`` (0-D)."""
        return self.scorer(b, score)(self.logits[b:b + 1])[0]

    def evaluate(self, make: Callable[[int, int], Any], n: int, score: Callable[[torch.Tensor], torch.Tensor],
                 predict: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
        """Scores of ``n`` perturbed inputs ``make(start, stop)`` (:func:`convscope.engines.perturb.evaluate`
        with the run's predictor, chunk size and progress option)."""
        return evaluate(predict or self.predict, make, n, score, batch_size=self.batch_size,
                        progress=self.engine.progress, desc=self.desc)

    def baseline(self, b: int, kind: Any, score: str = "raw", **kw: Any) -> torch.Tensor:
        """What masked pixels of image ``b`` show: :func:`convscope.models.inputs.baseline` of ``kind``, or
        for ``kind="auto"`` the one of :data:`AUTO_BASELINES` that gives the explained score its
        lowest value (the baseline that carries the least evidence for the target; one pass of the
        candidates), recorded per image in ``diagnostics["baseline_chosen"]``.

        Args:
            b: the image index.
            kind: a baseline of :func:`convscope.models.inputs.baseline`, or ``"auto"``.
            score: the method's score (``"raw"`` or ``"softmax"``).
            **kw: ``sigma`` and ``seed`` for :func:`convscope.models.inputs.baseline`.
        """
        xb = self.ctx.x[b]
        if not (isinstance(kind, str) and kind == AUTO):
            return make_baseline(xb, kind, self.ctx.preprocessing, **kw)
        cands = torch.stack([make_baseline(xb, k, self.ctx.preprocessing, **kw) for k in AUTO_BASELINES])
        with torch.no_grad():
            s = self.scorer(b, score)(self.predict(cands)).float()
        i = int(torch.argmin(s))  # ties: the first, so grey where nothing tells them apart
        self.extra.setdefault("baseline_chosen", []).append(AUTO_BASELINES[i])
        return cands[i]

    def info(self) -> dict[str, Any]:
        """What ran: ``{"incremental", "channels_last", "batch_size", "compile"}``."""
        comp = self.engine.compile
        return {"incremental": self.incremental, "channels_last": self.channels_last,
                "batch_size": self.batch_size,
                "compile": comp if isinstance(comp, (bool, str)) else getattr(comp, "__name__", "callable")}

    def output(self, maps: list[torch.Tensor], normalize: str = "auto", **diagnostics: Any) -> MethodOutput:
        """The method's result, with ``diagnostics["engine"]`` = :meth:`info`."""
        if "baseline_chosen" in self.extra:
            diagnostics["baseline_chosen"] = list(self.extra["baseline_chosen"])
        return MethodOutput(map=torch.stack(maps), targets=self.labels, logits=self.logits,
                            normalize=normalize, diagnostics={**diagnostics, "engine": self.info()})
