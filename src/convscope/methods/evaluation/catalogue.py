"""The metric catalogue: one table of every metric ``convscope.evaluate`` can run.

Each :class:`MetricSpec` names its family, its direction, what it needs (the maps only, region
masks, or the method itself to re-explain perturbed inputs or a randomised model) and the defaults
the grid uses where a choice must be made; those defaults are stated in every result. The
functions themselves live in the family modules (:mod:`.faithfulness`, :mod:`.faithfulness_sets`,
:mod:`.faithfulness_stats`,
:mod:`.complexity`, :mod:`.localisation`, :mod:`.robustness`, :mod:`.randomisation`,
:mod:`.randomisation_revisited`,
:mod:`.axiomatic`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from convscope.core.errors import InputError
from convscope.methods.evaluation import axiomatic as ax
from convscope.methods.evaluation import complexity as co
from convscope.methods.evaluation import faithfulness as fa
from convscope.methods.evaluation import faithfulness_sets as fs
from convscope.methods.evaluation import faithfulness_stats as st
from convscope.methods.evaluation import localisation as lo
from convscope.methods.evaluation import randomisation as ra
from convscope.methods.evaluation import randomisation_revisited as rs
from convscope.methods.evaluation import robustness as ro
from convscope.methods.evaluation.pointing import pointing_game

__all__ = [
    "FAMILIES", "METRICS", "MetricContext", "MetricSpec", "coarse_step", "get_metric", "select_metrics",
]

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiomatic")


@dataclass
class MetricContext:
    """What a metric of the grid gets: the model, the batch, one method's maps and explainer."""

    lm: Any
    x: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    explainer: Callable[..., torch.Tensor] | None
    masks: torch.Tensor | None
    batch_size: int | str
    seed: int
    notes: list[str] = field(default_factory=list)  # why a cell is unreliable, for MetricTable.notes


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the catalogue.

    Attributes:
        name: the grid's name for it.
        family: one of :data:`FAMILIES`.
        higher_is_better: its direction.
        needs: ``""`` (maps), ``"masks"`` (ground-truth regions) or ``"explainer"`` (re-explains).
        run: ``run(ctx, **options) -> (B,)`` scores.
        defaults: the options the grid passes unless told otherwise.
        reference: the paper.
    """

    name: str
    family: str
    higher_is_better: bool
    needs: str
    run: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""


def coarse_step(n: int, steps: int = 64) -> int:
    """The smallest divisor ``d`` of ``n`` with ``n / d <= steps``: pixels per step of a sweep."""
    return next(d for d in range(max(1, -(-n // steps)), n + 1) if n % d == 0)


def _step(ctx: MetricContext, kw: dict[str, Any]) -> dict[str, Any]:
    if kw.get("features_in_step") == "auto":
        kw = {**kw, "features_in_step": coarse_step(ctx.x.shape[-2] * ctx.x.shape[-1])}
    return kw


def _common(ctx: MetricContext) -> dict[str, Any]:
    return {"targets": ctx.targets, "batch_size": ctx.batch_size, "progress": False}


def _ex(ctx: MetricContext) -> dict[str, Any]:
    return {"targets": ctx.targets, "maps": ctx.maps, "seed": ctx.seed}


_M: list[MetricSpec] = [
    MetricSpec("pixel_flipping", "faithfulness", False, "",
               lambda c, **k: fa.pixel_flipping(c.lm, c.x, c.maps, **_common(c), **_step(c, k)).auc,
               {"features_in_step": "auto", "baseline": "black"}, "Bach et al. 2015"),
    MetricSpec("region_perturbation_morf", "faithfulness", True, "",
               lambda c, **k: fa.region_perturbation(c.lm, c.x, c.maps, order="morf", **_common(c), **k).aopc,
               {"patch_size": 4, "regions": 32, "baseline": "black"}, "Samek et al. 2017"),
    MetricSpec("region_perturbation_lerf", "faithfulness", False, "",
               lambda c, **k: fa.region_perturbation(c.lm, c.x, c.maps, order="lerf", **_common(c), **k).aopc,
               {"patch_size": 4, "regions": 32, "baseline": "black"}, "Samek et al. 2017"),
    MetricSpec("selectivity", "faithfulness", False, "",
               lambda c, **k: fa.selectivity(c.lm, c.x, c.maps, **_common(c), **k).auc,
               {"patch_size": 4, "baseline": "black"}, "Montavon et al. 2018"),
    MetricSpec("faithfulness_correlation", "faithfulness", True, "",
               lambda c, **k: fa.faithfulness_correlation(c.lm, c.x, c.maps, **_common(c), seed=c.seed, **k),
               {"n_samples": 100, "baseline": "black"}, "Bhatt et al. 2020"),
    MetricSpec("faithfulness_estimate", "faithfulness", True, "",
               lambda c, **k: fa.faithfulness_estimate(c.lm, c.x, c.maps, **_common(c), seed=c.seed,
                                                       **_step(c, k)),
               {"features_in_step": "auto", "baseline": "black"}, "Alvarez-Melis and Jaakkola 2018"),
    MetricSpec("monotonicity", "faithfulness", True, "",
               lambda c, **k: fa.monotonicity(c.lm, c.x, c.maps, **_common(c), seed=c.seed,
                                              **_step(c, k)).float(),
               {"features_in_step": "auto", "baseline": "black"}, "Arya et al. 2019"),
    MetricSpec("road_morf", "faithfulness", False, "",
               lambda c, **k: fs.road(c.lm, c.x, c.maps, order="morf", **_common(c), seed=c.seed, **k).auc,
               {"percentages": [10, 30, 50, 70, 90], "noise": 0.01}, "Rong et al. 2022"),
    MetricSpec("road_lerf", "faithfulness", True, "",
               lambda c, **k: fs.road(c.lm, c.x, c.maps, order="lerf", **_common(c), seed=c.seed, **k).auc,
               {"percentages": [10, 30, 50, 70, 90], "noise": 0.01}, "Rong et al. 2022"),
    MetricSpec("irof", "faithfulness", True, "",
               lambda c, **k: fs.irof(c.lm, c.x, c.maps, **_common(c), **k),
               {"baseline": "mean"}, "Rieger and Hansen 2020"),
    MetricSpec("monotonicity_correlation", "faithfulness", True, "",
               lambda c, **k: st.monotonicity_correlation(c.lm, c.x, c.maps, **_common(c), seed=c.seed,
                                                          **_step(c, k)),
               {"features_in_step": "auto", "baseline": "black"}, "Nguyen and Martinez 2020"),
    MetricSpec("sensitivity_n", "faithfulness", True, "",
               lambda c, **k: st.sensitivity_n(c.lm, c.x, c.maps, **_common(c), seed=c.seed, **k).mean(1),
               {"n_samples": 50, "baseline": "black"}, "Ancona et al. 2018"),
    MetricSpec("infidelity", "faithfulness", False, "",
               lambda c, **k: st.infidelity(c.lm, c.x, c.maps, **_common(c), seed=c.seed, **k),
               {"patch_size": 4, "n_samples": 32, "baseline": "black"}, "Yeh et al. 2019"),
    MetricSpec("sufficiency", "faithfulness", True, "",
               lambda c, **k: st.sufficiency(c.maps, c.targets, **k), {"threshold": 0.6},
               "Dasgupta et al. 2022"),
    MetricSpec("max_sensitivity", "robustness", False, "explainer",
               lambda c, **k: ro.max_sensitivity(c.lm, c.x, c.explainer, **_ex(c), **k),
               {"radius": 0.1, "n_samples": 8}, "Yeh et al. 2019"),
    MetricSpec("avg_sensitivity", "robustness", False, "explainer",
               lambda c, **k: ro.avg_sensitivity(c.lm, c.x, c.explainer, **_ex(c), **k),
               {"radius": 0.1, "n_samples": 8}, "Yeh et al. 2019"),
    MetricSpec("local_lipschitz", "robustness", False, "explainer",
               lambda c, **k: ro.local_lipschitz_estimate(c.lm, c.x, c.explainer, **_ex(c), **k),
               {"std": 0.1, "n_samples": 8}, "Alvarez-Melis and Jaakkola 2018"),
    MetricSpec("relative_input_stability", "robustness", False, "explainer",
               lambda c, **k: ro.relative_stability(c.lm, c.x, c.explainer, kind="input", **_ex(c), **k),
               {"low": 0.02, "high": 0.2, "n_samples": 8}, "Agarwal et al. 2022"),
    MetricSpec("relative_output_stability", "robustness", False, "explainer",
               lambda c, **k: ro.relative_stability(c.lm, c.x, c.explainer, kind="output", **_ex(c), **k),
               {"low": 0.02, "high": 0.2, "n_samples": 8}, "Agarwal et al. 2022"),
    MetricSpec("relative_representation_stability", "robustness", False, "explainer",
               lambda c, **k: ro.relative_stability(c.lm, c.x, c.explainer, kind="representation", **_ex(c),
                                                    **k),
               {"low": 0.02, "high": 0.2, "n_samples": 8, "layer": None}, "Agarwal et al. 2022"),
    MetricSpec("continuity", "robustness", False, "explainer",
               lambda c, **k: ro.continuity(c.lm, c.x, c.explainer, **_ex(c), **k),
               {"n_steps": 28, "baseline": "black"}, "Montavon et al. 2018"),
    MetricSpec("consistency", "robustness", True, "",
               lambda c, **k: ro.consistency(c.maps, c.targets, seed=c.seed, **k), {"n": 5},
               "Dasgupta et al. 2022"),
    MetricSpec("pointing_game", "localisation", True, "masks",
               lambda c, **k: pointing_game(c.maps, c.masks, **k).float(), {"tolerance": 0},
               "Zhang et al. 2016"),
    MetricSpec("top_k_intersection", "localisation", True, "masks",
               lambda c, **k: lo.top_k_intersection(c.maps, c.masks, seed=c.seed, **k), {"k": None},
               "Theiner et al. 2022"),
    MetricSpec("relevance_rank_accuracy", "localisation", True, "masks",
               lambda c, **k: lo.relevance_rank_accuracy(c.maps, c.masks, seed=c.seed), {},
               "Arras et al. 2022"),
    MetricSpec("relevance_mass_accuracy", "localisation", True, "masks",
               lambda c, **k: lo.relevance_mass_accuracy(c.maps, c.masks), {}, "Arras et al. 2022"),
    MetricSpec("attribution_localisation", "localisation", True, "masks",
               lambda c, **k: lo.attribution_localisation(c.maps, c.masks, **k), {"weighted": False},
               "Kohlbrenner et al. 2020"),
    MetricSpec("localisation_auc", "localisation", True, "masks",
               lambda c, **k: lo.localisation_auc(c.maps, c.masks), {}, "Fawcett 2006"),
    MetricSpec("sparseness", "complexity", True, "", lambda c, **k: co.sparseness(c.maps), {},
               "Chalasani et al. 2020"),
    MetricSpec("entropy_complexity", "complexity", False, "",
               lambda c, **k: co.entropy_complexity(c.maps), {}, "Bhatt et al. 2020"),
    MetricSpec("effective_complexity", "complexity", False, "",
               lambda c, **k: co.effective_complexity(c.maps, **k).float(), {"eps": 1e-5},
               "Nguyen and Martinez 2020"),
    MetricSpec("mprt", "randomisation", False, "explainer",
               lambda c, **k: ra.mprt(c.lm, c.x, c.explainer, **_ex(c), **k), {"mode": "cascading"},
               "Adebayo et al. 2018"),
    MetricSpec("smooth_mprt", "randomisation", False, "explainer",
               lambda c, **k: rs.smooth_mprt(c.lm, c.x, c.explainer, targets=c.targets, seed=c.seed, **k),
               {"mode": "bottom_up", "n_samples": 10, "noise_magnitude": 0.1}, "Hedström et al. 2023"),
    MetricSpec("efficient_mprt", "randomisation", True, "explainer",
               lambda c, **k: rs.efficient_mprt(c.lm, c.x, c.explainer, **_ex(c), **k), {"n_bins": 100},
               "Hedström et al. 2023"),
    MetricSpec("random_logit", "randomisation", False, "explainer",
               lambda c, **k: ra.random_logit(c.lm, c.x, c.explainer, targets=c.targets, maps=c.maps, **k),
               {"seed": 42}, "Sixt et al. 2020"),
    MetricSpec("completeness", "axiomatic", False, "",
               lambda c, **k: ax.completeness(c.lm, c.x, c.maps, targets=c.targets, batch_size=c.batch_size,
                                              **k),
               {"baseline": "black"}, "Sundararajan et al. 2017"),
    MetricSpec("input_invariance", "axiomatic", True, "explainer",
               lambda c, **k: ax.input_invariance(c.lm, c.x, c.explainer, **_ex(c), notes=c.notes, **k),
               {"shift": -1.0, "atol": 1e-4}, "Kindermans et al. 2017"),
    MetricSpec("non_sensitivity", "axiomatic", False, "",
               lambda c, **k: ax.non_sensitivity(c.lm, c.x, c.maps, **_common(c), **_step(c, k)).float(),
               {"eps": 1e-5, "features_in_step": "auto", "baseline": "black"}, "Nguyen and Martinez 2020"),
]

#: name -> spec, in the catalogue's order (families in :data:`FAMILIES` order)
METRICS: dict[str, MetricSpec] = {m.name: m for f in FAMILIES for m in _M if m.family == f}


def get_metric(name: str) -> MetricSpec:
    """The spec of metric ``name``, or an error listing the metrics."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown metric {name!r}; use one of: {', '.join(METRICS)}") from None


def select_metrics(metrics: Any = None, families: Any = None) -> list[MetricSpec]:
    """The metrics named, or those of the families named (default: every metric)."""
    if metrics is not None and families is not None:
        raise InputError("give metrics= or families=, not both")
    if metrics is not None:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        if not names:
            raise InputError("metrics= is empty; name at least one metric")
        return [get_metric(n) for n in dict.fromkeys(names)]
    if families is None:
        fams = list(FAMILIES)
    else:
        fams = [families] if isinstance(families, str) else list(families)
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        raise InputError(f"unknown families {bad or fams!r}; use some of: {', '.join(FAMILIES)}")
    return [m for m in METRICS.values() if m.family in fams]
