"""The web app's "Which method to trust" view: :func:`convscope.evaluate` on the current model and
the app's images, run as a background job.

A request (``POST /api/trust``) is checked in full before anything queues: the model, the method
names (the registry), the metric or family names (the catalogue; the localisation metrics need
ground-truth masks, which the app does not have, and are refused), the sample indices or uploaded
images (at most :attr:`Limits.max_evaluate_images`, counted before any is decoded), and methods
that do not apply to the model (the attention methods on a model without attention layers). The
evaluation then runs as one heavy job per method on the engine's
:class:`~convscope.frontends.serve.jobs.JobQueue`, so cheap requests (explain, grid) go in between
the methods; a full queue answers 429 at the start. The whole evaluation is stopped at its next
forward pass once :attr:`Limits.evaluate_timeout_s` passes; at most :data:`MAX_OPEN` evaluations
are open at once (one that timed out stays open until its running job has stopped). The answer
is an id; ``GET /api/trust/{id}`` gives the progress (the grid's cells done of all) while it runs,
then the table: per method and metric the mean with its 95 % bootstrap interval and its rank, the
mean rank and the best method per family, the options the metrics ran with, the picture, and the
table's own reliability notes (fewer than 8 images: the intervals are too wide to rank on).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from convscope.core.errors import InputError
from convscope.core.progress import Progress
from convscope.core.results import data_uri
from convscope.core.validate import split_names
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


def _number(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # JSON has no NaN


def table_payload(table: Any) -> dict[str, Any]:
    """What the page draws of a :class:`~convscope.methods.evaluation.grid.MetricTable`."""
    from convscope.methods.evaluation.catalogue import METRICS

    fam = table.family_ranks()
    cells: dict[str, dict[str, Any]] = {me: {} for me in table.methods}
    for row in table.rows():
        cells[row["method"]][row["metric"]] = {
            "mean": _number(row["mean"]), "ci": [_number(row["ci_low"]), _number(row["ci_high"])],
            "rank": _number(row["rank"]), "seconds": round(row["seconds"], 3), "error": row["error"]}
    return {
        "methods": table.methods,
        "metrics": [{"name": m, "family": METRICS[m].family, "higher_is_better": METRICS[m].higher_is_better,
                     "reference": METRICS[m].reference, "options": table.options.get(m, {})}
                    for m in table.metrics],
        "cells": cells,
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
        # a timed-out evaluation whose job still runs (until its next forward pass) is open too
        return sum(1 for j in self._jobs.values() if j["status"] in ("queued", "running") or j["busy"])

    def check_count(self, n: int) -> None:
        """Refuse ``n`` images over :attr:`Limits.max_evaluate_images` (before decoding any).

        Raises:
            InputError: too many images.
        """
        limit = self.engine.limits.max_evaluate_images
        if n > limit:
            raise InputError(f"{n} images; the app scores at most {limit} at once")

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
        from convscope.methods.registry import get_method, inapplicable

        eng = self.engine
        lm = eng.model(model)
        names = split_names(methods) or list(DEFAULT_METHODS)
        for n in names:  # an unknown name, or one the registry's `requires` rules out: one line
            why = inapplicable(get_method(n), lm.model)
            if why is not None:
                raise InputError(f"{why}; pick other methods")
        if len(set(names)) != len(names):
            raise InputError("a method is named twice; name each once")
        fams = split_names(families)
        mets = split_names(metrics) or (None if fams else list(DEFAULT_METRICS))
        specs = select_metrics(mets, fams or None)
        needs_masks = [s.name for s in specs if s.needs == "masks"]
        if needs_masks:
            raise InputError(f"{', '.join(needs_masks)} need ground-truth masks, which the app does not "
                             "have; pick other metrics or families")
        pics = list(images)
        self.check_count(len(pics))
        if not pics:
            picks = split_names(samples)
            if not picks:
                if not eng.takes_samples[lm.name]:
                    raise InputError(f"{model} takes no sample images; upload images to score the methods on")
                picks = [str(i) for i in range(len(eng.samples))]
            self.check_count(len(picks))
            for p in picks:
                try:
                    index = int(p)
                except ValueError:
                    raise InputError(f"samples must be numbers, got {p!r}") from None
                pics.append(eng.sample(index, model))
        x = torch.cat([prepare_inputs(p, lm.preprocessing, generic=lm.any_channels)[0] for p in pics])
        total = len(names) * (len(specs) + 1)
        job: dict[str, Any] = {"id": uuid.uuid4().hex, "status": "queued", "total": total, "bar": None,
                               "result": None, "error": "", "warnings": [], "started": time.time(),
                               "done": 0, "busy": False, "model": lm.name, "n_images": len(pics)}
        with self._lock:
            if self._open() >= MAX_OPEN:
                raise QueueFull(f"{MAX_OPEN} evaluations are already running or waiting; try again when one "
                                "finishes", 30)
            if eng.jobs.waiting >= eng.jobs.max_queue:
                raise QueueFull(f"the app is busy: {eng.jobs.waiting} jobs are waiting; try again shortly",
                                30)
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
        from convscope.methods.evaluation.grid import MetricTable, evaluate

        def work(name: str) -> Callable[[Callable[[], bool]], Any]:
            def run(expired: Callable[[], bool]) -> Any:
                job["status"], job["busy"] = "running", True
                try:
                    # an outer Progress the page reads: the grid's bar reports to it
                    with Progress("trust", 1, enabled=True, every=math.inf) as bar, \
                            stop_after(lm.model, expired):
                        job["bar"] = bar
                        return evaluate(lm, x, [name], metrics=metrics, progress=None)
                finally:
                    job["bar"], job["busy"] = None, False
            return run

        try:
            tables = []
            for name in methods:  # one heavy job per method: cheap requests go in between
                tables.append(self.engine.jobs.run(work(name), heavy=True, deadline=deadline))
                job["done"] += len(metrics) + 1
            table = MetricTable.join(tables)
            job["warnings"] = list(table.notes)
            job["result"] = table_payload(table)
            job["status"] = "done"
        except Exception as exc:  # shown on the page as one line
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            job["error"] = msg if getattr(exc, "status", None) or isinstance(exc, InputError) \
                else f"the evaluation failed: {msg}"
            job["status"] = "failed"
        finally:
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
        done, note = job["done"], ""
        bar = job["bar"]
        if bar is not None and job["status"] == "running":
            grid = next((p for p in bar.inner if p.desc == "evaluate"), None)
            if grid is not None:
                done, note = done + grid.done, grid.note
        out = {k: job[k] for k in ("id", "status", "total", "error", "warnings", "model", "n_images")}
        out.update(done=done, note=note, seconds=job.get("seconds"))
        if job["status"] == "done":
            out["result"] = job["result"]
        return out

