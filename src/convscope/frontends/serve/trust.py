"""The web app's "Which method to trust" view: :func:`convscope.evaluate` on the current model and
the app's images, run as a background job.

A request (``POST /api/trust``) is checked in full before anything queues: the model, the method
names (the registry), the metric or family names (the catalogue; the localisation metrics need
ground-truth masks, which the app does not have, and are refused), the sample indices or uploaded
images (at most :attr:`Limits.max_evaluate_images`). The evaluation then runs as one heavy job of
the engine's :class:`~convscope.frontends.serve.jobs.JobQueue` (bounded: a full queue answers
429), stopped at its next forward pass once :attr:`Limits.evaluate_timeout_s` passes; at most
:data:`MAX_OPEN` evaluations are open at once. The answer is an id; ``GET /api/trust/{id}`` gives
the progress (the grid's cells done of all) while it runs, then the table: per method and
metric the mean with its 95 % bootstrap interval and its rank, the mean rank and the best method
per family, the options the metrics ran with, the picture, and the warnings (fewer than 8 images:
the intervals are too wide to rank on).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.progress import Progress
from convscope.core.results import data_uri
from convscope.frontends.serve._present import NotFound
from convscope.frontends.serve.jobs import QueueFull, stop_after

__all__ = ["DEFAULT_METHODS", "DEFAULT_METRICS", "MAX_OPEN", "NotATrustJob", "TrustJobs"]

#: The methods scored when the request names none.
DEFAULT_METHODS = ("gradcam", "saliency", "gradient_x_input")
#: The metrics scored when the request names neither metrics nor families: one or two per family
#: that needs no masks, chosen to finish in about a minute on the bundled digits models on a CPU.
DEFAULT_METRICS = ("region_perturbation_morf", "faithfulness_correlation", "max_sensitivity", "sparseness",
                   "random_logit", "completeness")
#: Evaluations open at once (queued or running); one more is refused (HTTP 429).
MAX_OPEN = 2
#: Finished evaluations kept for their pages.
KEEP = 8


class NotATrustJob(NotFound):
    """No evaluation has this id (or it is no longer kept): HTTP 404."""


def _names(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s and s.strip()]


def _number(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # JSON has no NaN


def table_payload(table: Any) -> dict[str, Any]:
    """What the page draws of a :class:`~convscope.methods.evaluation.grid.MetricTable`."""
    from convscope.methods.evaluation.catalogue import METRICS

    ranks = table.ranks()
    fam = table.family_ranks()
    return {
        "methods": table.methods,
        "metrics": [{"name": m, "family": METRICS[m].family, "higher_is_better": METRICS[m].higher_is_better,
                     "reference": METRICS[m].reference, "options": table.options.get(m, {})}
                    for m in table.metrics],
        "cells": {me: {m: {"mean": _number(table.mean(me, m)), "ci": [_number(c) for c in table.ci[me][m]],
                           "rank": _number(ranks[m][me]), "seconds": round(table.seconds[me][m], 3),
                           "error": table.errors.get(me, {}).get(m, "")}
                       for m in table.metrics} for me in table.methods},
        "family_ranks": {f: {me: _number(v) for me, v in d.items()} for f, d in fam.items()},
        "best": table.best(),
        "n_images": table.n_images,
        "caption": table.html_caption(),
        "png": data_uri(table.png()),
        "assumed": list(table.model_info.get("assumed") or []),
    }


class TrustJobs:
    """The open and finished evaluations of one :class:`~convscope.frontends.serve.engine.Engine`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _open(self) -> int:
        return sum(1 for j in self._jobs.values() if j["status"] in ("queued", "running"))

    def start(self, model: str, *, methods: str | Sequence[str] | None = None,
              metrics: str | Sequence[str] | None = None, families: str | Sequence[str] | None = None,
              samples: str | Sequence[str] | None = None,
              images: Sequence[Image.Image] = ()) -> dict[str, Any]:
        """Check the request, queue the evaluation and return ``{"id", "status", "total"}``.

        Raises:
            InputError: an unknown model, method, metric or family, a localisation metric, a bad
                sample index, no images or too many.
            QueueFull: :data:`MAX_OPEN` evaluations are open, or the job queue is full.
        """
        from convscope.methods.evaluation.catalogue import select_metrics
        from convscope.methods.explain import prepare_inputs
        from convscope.methods.registry import get_method

        eng = self.engine
        lm = eng.model(model)
        names = _names(methods) or list(DEFAULT_METHODS)
        for n in names:
            get_method(n)  # an unknown name: a one-line error listing the methods
        if len(set(names)) != len(names):
            raise InputError("a method is named twice; name each once")
        fams = _names(families)
        mets = _names(metrics) or (None if fams else list(DEFAULT_METRICS))
        specs = select_metrics(mets, fams or None)
        needs_masks = [s.name for s in specs if s.needs == "masks"]
        if needs_masks:
            raise InputError(f"{', '.join(needs_masks)} need ground-truth masks, which the app does not "
                             "have; pick other metrics or families")
        pics = list(images)
        if not pics:
            picks = _names(samples)
            if not picks:
                if not eng.takes_samples[lm.name]:
                    raise InputError(f"{model} takes no sample images; upload images to score the methods on")
                picks = [str(i) for i in range(len(eng.samples))]
            for p in picks:
                try:
                    index = int(p)
                except ValueError:
                    raise InputError(f"samples must be numbers, got {p!r}") from None
                pics.append(eng.sample(index, model))
        limit = eng.limits.max_evaluate_images
        if len(pics) > limit:
            raise InputError(f"{len(pics)} images; the app scores at most {limit} at once")
        x = torch.cat([prepare_inputs(p, lm.preprocessing, generic=lm.any_channels)[0] for p in pics])
        total = len(names) * (len(specs) + 1)
        job: dict[str, Any] = {"id": uuid.uuid4().hex, "status": "queued", "total": total, "bar": None,
                               "result": None, "error": "", "warnings": [], "started": time.time(),
                               "model": lm.name, "n_images": len(pics)}
        with self._lock:
            if self._open() >= MAX_OPEN:
                raise QueueFull(f"{MAX_OPEN} evaluations are already running or waiting; try again when one "
                                "finishes", 30)
            self._jobs[job["id"]] = job
            while len(self._jobs) > KEEP + MAX_OPEN:  # drop the oldest finished one
                old = next((k for k, j in self._jobs.items()
                            if j["status"] not in ("queued", "running")), None)
                if old is None:
                    break
                del self._jobs[old]
        deadline = time.monotonic() + eng.limits.evaluate_timeout_s
        threading.Thread(target=self._run, args=(job, lm, x, names, [s.name for s in specs], deadline),
                         name="convscope-trust", daemon=True).start()
        return {"id": job["id"], "status": "queued", "total": total}

    def _run(self, job: dict[str, Any], lm: Any, x: torch.Tensor, methods: list[str], metrics: list[str],
             deadline: float) -> None:
        from convscope.methods.evaluation.grid import evaluate

        def work(expired: Callable[[], bool]) -> Any:
            job["status"] = "running"
            # an outer Progress the page reads: the grid's bar reports to it
            with Progress("trust", 1, enabled=True, every=math.inf) as bar, stop_after(lm.model, expired), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                job["bar"] = bar
                table = evaluate(lm, x, methods, metrics=metrics, progress=None)
            job["warnings"] = list(dict.fromkeys(str(w.message) for w in caught
                                                 if issubclass(w.category, UserWarning)))
            return table

        try:
            table = self.engine.jobs.run(work, heavy=True, deadline=deadline)
            job["result"] = table_payload(table)
            job["status"] = "done"
        except Exception as exc:  # shown on the page as one line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            job["error"] = msg if getattr(exc, "status", None) or isinstance(exc, InputError) \
                else f"the evaluation failed: {msg}"
            job["status"] = "failed"
        finally:
            job["bar"] = None
            job["seconds"] = round(time.time() - job["started"], 1)

    def status(self, jid: str) -> dict[str, Any]:
        """The evaluation's state: ``queued``, ``running`` (with ``done`` of ``total`` cells and the
        cell in progress), ``done`` (with ``result``) or ``failed`` (with ``error``).

        Raises:
            NotATrustJob: no evaluation has this id.
        """
        with self._lock:
            job = self._jobs.get(jid)
        if job is None:
            raise NotATrustJob(f"no evaluation {jid!r}; start one (it may have been dropped)")
        done, note = 0, ""
        bar = job["bar"]
        if bar is not None:
            grid = next((p for p in bar.inner if p.desc == "evaluate"), None)
            if grid is not None:
                done, note = grid.done, grid.note
        elif job["status"] == "done":
            done = job["total"]
        out = {k: job[k] for k in ("id", "status", "total", "error", "warnings", "model", "n_images")}
        out.update(done=done, note=note, seconds=job.get("seconds"))
        if job["status"] == "done":
            out["result"] = job["result"]
        return out

