"""``convscope.evaluate``: which explanation can I trust for my model? A method x metric table.

Every method explains the images once; every metric of the catalogue (:mod:`.catalogue`) scores
those maps (the robustness and randomisation metrics re-run the method). Each cell holds the
per-image scores, their mean and a percentile bootstrap 95 % confidence interval over the images
(the same resamples for every cell, so cells are compared on the same draws). Within each metric
the methods are ranked (1 = best in the metric's direction, ties share the mean rank); a method's
family rank is its mean rank over the family's metrics. One progress bar covers the whole grid.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from convscope.core.errors import InputError, UnreliableResultWarning
from convscope.core.progress import Progress
from convscope.core.result import Result
from convscope.core.validate import check_values, ints
from convscope.methods.evaluation._common import as_loaded, predict_targets
from convscope.methods.evaluation._prep import check_maps
from convscope.methods.evaluation.catalogue import METRICS, MetricContext, select_metrics
from convscope.methods.evaluation.explainers import as_explainer, explainer_name
from convscope.methods.evaluation.pointing import region_masks

__all__ = ["MetricTable", "evaluate"]

#: fewer images than this and the confidence intervals are too wide to rank on: the table warns
MIN_IMAGES = 8


@dataclass(frozen=True)
class MetricTable(Result):
    """Method x metric scores with bootstrap confidence intervals and ranks.

    Attributes:
        methods: method names (rows).
        metrics: metric names (columns).
        scores: ``scores[method][metric]``: (B,) per-image scores (NaN where a metric failed).
        ci: ``ci[method][metric]``: (low, high) 95 % bootstrap interval of the mean.
        options: ``options[metric]``: the choices the metric ran with (defaults stated).
        seconds: ``seconds[method][metric]``: time spent on the cell.
        model_info: the model's name and what convscope assumed about it.
        errors: ``errors[method][metric]``: why a cell is empty.
        explain_seconds: ``explain_seconds[method]``: time to explain the images once.
        notes: why the table is unreliable, where it is (also warned as
            :class:`~convscope.core.errors.UnreliableResultWarning`); a caller on another thread
            reads these instead of catching warnings, which are process-wide.
    """

    methods: list[str]
    metrics: list[str]
    scores: dict[str, dict[str, np.ndarray]]
    ci: dict[str, dict[str, tuple[float, float]]]
    options: dict[str, dict[str, Any]]
    seconds: dict[str, dict[str, float]]
    model_info: dict[str, Any]
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    explain_seconds: dict[str, float] = field(default_factory=dict)
    n_boot: int = 1000
    notes: tuple[str, ...] = ()

    save_formats = (".png", ".json", ".html")

    @classmethod
    def join(cls, tables: Sequence[MetricTable]) -> MetricTable:
        """One table of the rows of ``tables`` (each one or more methods, the same metrics, images
        and seed, e.g. :func:`evaluate` run per method): equal to one :func:`evaluate` of all the
        methods, since each cell depends only on its method and the bootstrap draws on the seed."""
        if not tables or any(t.metrics != tables[0].metrics for t in tables):
            raise InputError("join tables of the same metrics")
        first = tables[0]
        merged: dict[str, dict[str, Any]] = {k: {} for k in ("scores", "ci", "seconds", "errors",
                                                             "explain_seconds")}
        for t in tables:
            for k, d in merged.items():
                d.update(getattr(t, k))
        return cls([me for t in tables for me in t.methods], list(first.metrics), merged["scores"],
                   merged["ci"], first.options, merged["seconds"], first.model_info, merged["errors"],
                   merged["explain_seconds"], first.n_boot,
                   tuple(dict.fromkeys(n for t in tables for n in t.notes)))

    def mean(self, method: str, metric: str) -> float:
        """The mean of a cell over the images (NaN if it failed)."""
        v = self.scores[method][metric]
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    def ranks(self) -> dict[str, dict[str, float]]:
        """``ranks[metric][method]``: 1 = best in the metric's direction among the methods the metric
        scored; ties share the mean rank; a cell that failed (NaN) has no rank (NaN), so a method is
        never marked down for a metric it was not scored on."""
        from scipy.stats import rankdata

        out: dict[str, dict[str, float]] = {}
        for m in self.metrics:
            sign = -1.0 if METRICS[m].higher_is_better else 1.0
            vals = np.array([sign * self.mean(me, m) for me in self.methods])
            ok = np.isfinite(vals)
            rank = np.full(len(vals), np.nan)
            rank[ok] = rankdata(vals[ok], method="average")
            out[m] = dict(zip(self.methods, rank.tolist(), strict=True))
        return out

    def family_ranks(self) -> dict[str, dict[str, float]]:
        """``family_ranks[family][method]``: mean rank over the family's metrics that scored the
        method (NaN when none did)."""
        r = self.ranks()
        fams: dict[str, list[str]] = {}
        for m in self.metrics:
            fams.setdefault(METRICS[m].family, []).append(m)
        out: dict[str, dict[str, float]] = {}
        for f, ms in fams.items():
            out[f] = {}
            for me in self.methods:
                got = [r[m][me] for m in ms if np.isfinite(r[m][me])]
                out[f][me] = float(np.mean(got)) if got else float("nan")
        return out

    def best(self) -> dict[str, str]:
        """The best method per family (lowest mean rank; a family no method was scored on is left
        out)."""
        return {f: min((me for me in d if np.isfinite(d[me])), key=d.get)
                for f, d in self.family_ranks().items() if any(np.isfinite(v) for v in d.values())}

    def rows(self) -> list[dict[str, Any]]:
        """One plain row per (method, metric): mean, interval, rank, direction, family, seconds."""
        r = self.ranks()
        return [{"method": me, "metric": m, "family": METRICS[m].family, "mean": self.mean(me, m),
                 "ci_low": self.ci[me][m][0], "ci_high": self.ci[me][m][1], "rank": r[m][me],
                 "higher_is_better": METRICS[m].higher_is_better, "seconds": self.seconds[me][m],
                 "error": self.errors.get(me, {}).get(m, "")}
                for me in self.methods for m in self.metrics]

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the rows, the family ranks, the options and the model."""
        return {"rows": self.rows(), "family_ranks": self.family_ranks(), "options": self.options,
                "model": self.model_info, "n_images": self.n_images, "n_boot": self.n_boot,
                "scores": {me: {m: v.tolist() for m, v in d.items()} for me, d in self.scores.items()}}

    @property
    def n_images(self) -> int:
        """Images scored."""
        return len(next(iter(next(iter(self.scores.values())).values())))

    def report_title(self) -> str:
        """The report section's title."""
        return "Which method to trust"

    def html_caption(self) -> str:
        """What the table shows and how it was made."""
        lines = ", ".join(f"{f}: {m}" for f, m in self.best().items())
        assumed = self.model_info.get("assumed") or []
        said = f" convscope assumed about the model: {'; '.join(assumed)}." if assumed else ""
        return (f"{len(self.methods)} methods x {len(self.metrics)} metrics on {self.n_images} images; "
                f"cells: mean [95% bootstrap CI], colour: rank within the metric (green best). "
                f"Best per family: {lines}. Options: "
                + "; ".join(f"{m} {o}" for m, o in self.options.items() if o) + "." + said)

    def add_to_report(self, report: Any, *, title: str | None = None, note: str = "") -> Any:
        """A report section: the table itself (metric rows, one column per method: mean, 95 %
        interval and rank), the best method per family, then the coloured picture at full width."""
        from convscope.core.result import Figure, data_uri

        sec = report.section(title or self.report_title(), note)
        r = self.ranks()
        sec.table_header = ["metric", "family", "better", *self.methods]
        sec.table = [[m, METRICS[m].family, "higher" if METRICS[m].higher_is_better else "lower",
                      *(_cell(self.mean(me, m), self.ci[me][m], r[m][me]) for me in self.methods)]
                     for m in self.metrics]
        sec.rows.append([Figure(src=data_uri(self.png()), caption=self.html_caption(), pixelated=False,
                                width=min(1150, 170 * len(self.methods) + 330))])
        sec.row_labels.append("")
        return sec

    def png(self, *args: Any, **kwargs: Any) -> bytes:
        """The table as a picture (see :func:`.grid_plot.plot_table`)."""
        from convscope.methods.evaluation.grid_plot import plot_table

        return plot_table(self)

    def __repr__(self) -> str:
        return (f"MetricTable({len(self.methods)} methods x {len(self.metrics)} metrics, "
                f"{self.n_images} images)")


def _cell(mean: float, ci: tuple[float, float], rank: float) -> str:
    """``mean [low, high] #rank`` for the report's table (``failed`` for a cell that did not run)."""
    if not np.isfinite(mean):
        return "failed"
    return f"{mean:.3g} [{ci[0]:.3g}, {ci[1]:.3g}] #{rank:g}"


def _bootstrap(v: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """Percentile 95 % interval of the mean over the resamples ``idx``; images where the metric is
    undefined (NaN, e.g. consistency without a peer) are left out of each resample's mean."""
    if not np.isfinite(v).any():
        return (float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of undefined images only
        means = np.nanmean(v[idx], 1)
    means = means[np.isfinite(means)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _methods(methods: Any) -> list[tuple[str, Any]]:
    if methods is None:
        raise InputError("give methods=[...] (registered names, explainers, or {name: maps})")
    items = list(methods.items()) if isinstance(methods, Mapping) else [
        (m if isinstance(m, str) else explainer_name(m), m) for m in ([methods] if isinstance(methods, str)
                                                                       else methods)]
    if not items:
        raise InputError("methods= is empty; name at least one method")
    for name, spec in items:
        if isinstance(spec, str):
            from convscope.methods.registry import get_method

            get_method(spec)  # unknown name: the registry's one-line error
        elif not (callable(spec) or isinstance(spec, torch.Tensor)):
            raise InputError(f"method {name!r}: give a registered name, an explainer or a maps tensor")
    return items


def evaluate(
    model: Any,
    images: torch.Tensor,
    methods: Sequence[str | Callable[..., torch.Tensor]] | Mapping[str, Any],
    *,
    metrics: Sequence[str] | str | None = None,
    families: Sequence[str] | str | None = None,
    masks: Any = None,
    targets: Any = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    n_boot: int = 1000,
    batch_size: int | str = "auto",
    seed: int = 0,
    progress: bool | None = None,
) -> MetricTable:
    """Score ``methods`` on ``images`` with the catalogue's metrics: a method x metric table.

    Args:
        model: a model spec, module or loaded model.
        images: (B, C, H, W) inputs in model space.
        methods: registered method names, explainers ``f(lm, x, targets) -> maps``, or a mapping
            name -> method name, explainer or precomputed (B, H, W) maps (maps cannot be re-run:
            the robustness and randomisation cells of such a method stay empty).
        metrics, families: which metrics (names from :data:`.catalogue.METRICS`) or which families
            (default: every metric; localisation metrics need ``masks``).
        masks: (B, H, W) ground-truth regions or boxes (see :mod:`.pointing`).
        targets: class per image (default: the predicted class).
        options: ``{metric: {option: value}}`` over the catalogue's defaults (a metric takes the
            options its defaults name; values are checked by the metric).
        n_boot: bootstrap resamples for the intervals.
        batch_size: forward-pass chunk size or ``"auto"``.
        seed: seeds the methods, the metrics' draws and the bootstrap.
        progress: one bar for the grid (default: on a terminal).

    Raises:
        InputError: an unknown method, metric or family, localisation metrics without masks, maps of
            the wrong shape or non-finite.
    """
    check_values(n_boot=(n_boot, ints(10, 100_000)))
    specs = select_metrics(metrics, families)
    if masks is None:
        named = metrics is not None or families is not None
        if named and any(s.needs == "masks" for s in specs):
            raise InputError("the localisation metrics need masks=... (or boxes); give the ground-truth "
                             "regions")
        specs = [s for s in specs if s.needs != "masks"]
    unknown = set(options or {}) - set(METRICS)
    if unknown:
        raise InputError(f"options for unknown metrics {sorted(unknown)}; use names from the catalogue")
    for name, given in (options or {}).items():
        extra = sorted(set(given) - set(METRICS[name].defaults))
        if extra:
            allowed = ", ".join(METRICS[name].defaults) or "none"
            raise InputError(f"{name} has no option {', '.join(extra)}; its options: {allowed}")
    opts = {s.name: {**s.defaults, **dict((options or {}).get(s.name, {}))} for s in specs}
    items = _methods(methods)
    lm = as_loaded(model)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError("images must be a (B, C, H, W) tensor in model space")
    x = images.detach()
    t, _ = predict_targets(lm.model, x, targets, 64 if batch_size == "auto" else int(batch_size))
    reg = None if masks is None else region_masks(masks, (x.shape[-2], x.shape[-1]), x.shape[0]).to(x.device)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], (n_boot, x.shape[0]))
    scores: dict[str, dict[str, np.ndarray]] = {}
    ci: dict[str, dict[str, tuple[float, float]]] = {}
    secs: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, str]] = {}
    explain_secs: dict[str, float] = {}
    cell_notes: list[str] = []  # the metrics' own warnings, gathered here (see MetricTable.notes)
    with Progress("evaluate", len(items) * (len(specs) + 1), enabled=progress, unit="cells") as bar:
        for name, spec in items:
            t0 = time.perf_counter()
            ex = None if isinstance(spec, torch.Tensor) else as_explainer(spec, seed=seed) \
                if isinstance(spec, str) else spec
            maps = check_maps(x, spec if ex is None else ex(lm, x, t)).to(x.device)
            explain_secs[name] = time.perf_counter() - t0
            bar.advance()
            ctx = MetricContext(lm, x, maps, t, ex, reg, batch_size, seed, cell_notes)
            scores[name], ci[name], secs[name] = {}, {}, {}
            for s in specs:
                bar.status(f"{name} · {s.name}")
                t1 = time.perf_counter()
                if s.needs == "explainer" and ex is None:
                    v = np.full(x.shape[0], np.nan)
                    errors.setdefault(name, {})[s.name] = "precomputed maps cannot be re-explained"
                else:
                    v = torch.as_tensor(s.run(ctx, **opts[s.name])).double().cpu().numpy().reshape(-1)
                scores[name][s.name] = v
                ci[name][s.name] = _bootstrap(v, idx)
                secs[name][s.name] = time.perf_counter() - t1
                bar.advance()
    info = {"name": lm.name, "assumed": list(lm.assumed)}
    notes = (f"evaluate: {x.shape[0]} images give wide confidence intervals; rank methods on "
             f"{MIN_IMAGES} or more",) if x.shape[0] < MIN_IMAGES else ()
    notes += tuple(dict.fromkeys(cell_notes))
    for note in notes:
        warnings.warn(note, UnreliableResultWarning, stacklevel=2)
    return MetricTable([n for n, _ in items], [s.name for s in specs], scores, ci, opts, secs, info, errors,
                       explain_secs, n_boot, notes)
