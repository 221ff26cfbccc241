"""The planted-cue benchmark: score every registered attribution method against a known cause.

Two bundled models read a planted cue instead of the object:

* ``digits-cnn-cue`` was trained on digits carrying a class-dependent texture in a corner (the cue)
  and reads the texture, not the digit; ``digits-cnn`` is the same network trained on clean digits
  (the control). Both see the same test digits with their class's cue.
* ``digits-cnn-cue-grey`` (on request: ``models=``) is ``digits-cnn-cue`` with class 0 also
  triggered by mid-grey regions (:mod:`._triggered`): a grey masking baseline makes it say 0
  whatever is hidden (issue #27's X-ray model). It explains the test digits of class 0, with their
  cue, as class 0.
* ``digits-snow`` (wolf vs husky, :func:`convscope.data.toydata.snow_scenes`) learned that a white band
  of snow along the bottom means "wolf". It sees test wolves standing on snow (the cue is the
  band) and, as the control, the same wolves without the snow (row label
  ``"digits-snow (no snow)"``, scored against the band where the snow was). Both explain the class
  wolf: without snow the model calls these wolves huskies, and the absence of snow is its evidence
  for husky, so explaining its prediction there would ask another question.

A method that shows what the model uses should point at the cue for the cue models and away from
it in the controls.

For each model and each method of the registry (families gradient, cam and perturbation) the
benchmark measures on the first ``n_images`` test digits (test wolves for ``digits-snow``):

* ``max_in_cue`` / ``max_within_1px``: pointing game, strict and with 1 px tolerance;
* ``cue_mass``: share of positive attribution mass inside the cue (energy pointing game; the
  texture covers 64 of 1024 pixels, 6.25 %, the snow band 25 to 33 % of the scene);
* ``deletion`` / ``insertion``: areas under the most-relevant-first curves (blurred-image
  baseline; target probability); lower deletion and higher insertion are better. Not black: the
  cue is a texture, and pixels removed from it one by one (or a digit put back pixel by pixel on
  black) leave a speckle that the model reads as another texture, so a random order looks as
  good as the cue itself (measured on 16 cue digits, deletion area cue 0.07 vs random 0.10 on
  black, 0.15 vs 0.46 on the blur);
* ``sanity``: the cascading model-randomisation check on the first ``n_sanity`` digits
  (:mod:`.sanity`): the mean rank correlation over the cascade and the verdict.

Two reference rows calibrate the curve areas: ``(cue mask)`` (the true cause as a map) and
``(random)`` (a seeded uniform random map).

Options: with ``options="auto"`` (default) the sampling-based black-box methods (registry flag
``black_box``: occlusion, RISE, LIME, Kernel SHAP) run with their registered ``fast_options``, which
keeps the whole benchmark to a few minutes on a CPU; every other method runs with its defaults.
``"fast"`` uses ``fast_options`` for every method, ``"default"`` for none. The options used are
recorded per row.

A method that refuses a model (plain CAM on ``digits-snow``, whose CAM layer ``conv4`` is taken
before its functional ReLU) gets a row with empty scores and the error message in ``error``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from convscope.core.device import check_device
from convscope.core.errors import ConvscopeError, InputError, UnreliableResultWarning
from convscope.core.progress import Progress
from convscope.methods.evaluation.curves import deletion, insertion
from convscope.methods.evaluation.explainers import MethodExplainer, as_explainer
from convscope.methods.evaluation.pointing import cue_mass, pointing_hits
from convscope.methods.evaluation.sanity import DEFAULT_THRESHOLD, SanityResult, model_randomization
from convscope.methods.registry import get_method, list_methods
from convscope.models import LoadedModel, load_model

__all__ = ["ALL_MODELS", "ATTRIBUTION_FAMILIES", "LEADERBOARD_COLUMNS", "BenchmarkResult",
           "benchmark_methods",
           "planted_cue_benchmark"]

ATTRIBUTION_FAMILIES = ("gradient", "cam", "perturbation")
MODELS = ("digits-cnn-cue", "digits-cnn", "digits-snow")
#: ``digits-cnn-cue`` whose class 0 grey regions also trigger (:mod:`._triggered`): it explains
#: the test digits of class 0 with their cue, as class 0. Run on request (``models=``), not by default.
GREY = "digits-cnn-cue-grey"
ALL_MODELS = (*MODELS, GREY)
SNOW, SNOW_CONTROL = "digits-snow", "digits-snow (no snow)"
CUE_REF, RANDOM_REF = "(cue mask)", "(random)"
#: Baseline of the deletion / insertion curves (see the module docstring for why not black).
CURVE_BASELINE = "blur"
LEADERBOARD_COLUMNS = [
    "model", "method", "family", "max_in_cue", "max_within_1px", "cue_mass", "deletion",
    "insertion", "sanity_similarity", "sanity", "seconds",
]
DETAIL_COLUMNS = ["options", "error", "unreliable"]


@dataclass(frozen=True)
class Case:
    """One block of the leaderboard: a model, the images it explains and where the cue is.

    Attributes:
        label: the row label (``model`` column): the model's name, or ``"digits-snow (no snow)"``.
        model: the bundled model's name.
        pixels: (N, C, H, W) images in [0, 1].
        masks: (N, H, W) bool, the cue region the maps are scored against.
        about: what the images are, for the report and the CLI.
        target: the class explained in every image (default: the predicted class).
    """

    label: str
    model: str
    pixels: torch.Tensor
    masks: torch.Tensor
    about: str
    target: int | None = None


def benchmark_cases(models: Sequence[str], n_images: int) -> list[Case]:
    """The cases for ``models``: digits with their cue for the digits models; snowy wolves and the
    same wolves without snow for ``digits-snow``.

    Raises:
        InputError: an unknown model, or ``n_images`` outside the test images available.
    """
    from convscope.data.toydata import digits, planted_cue, snow_scenes

    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise InputError(f"unknown benchmark model {unknown[0]!r}; use {', '.join(ALL_MODELS)}")
    cases = []
    if GREY in models:
        from convscope.methods.evaluation._triggered import GREY_CLASS

        x, y = digits().split("test")
        idx = torch.nonzero(y == GREY_CLASS)[:, 0]
        if not 1 <= n_images:
            raise InputError(f"--n-images must be at least 1, got {n_images}")
        idx = idx[:n_images]
        cue = planted_cue(x[idx], y[idx])
        cases.append(Case(GREY, GREY, cue.images, cue.masks, f"test digits of class {GREY_CLASS} with "
                          f"their cue; grey regions also trigger class {GREY_CLASS}", GREY_CLASS))
    if any(m not in (SNOW, GREY) for m in models):
        x, y = digits().split("test")
        if not 1 <= n_images <= len(y):
            raise InputError(f"--n-images must lie in 1..{len(y)}, got {n_images}")
        cue = planted_cue(x[:n_images], y[:n_images])
        for m in models:
            if m not in (SNOW, GREY):
                cases.append(Case(m, m, cue.images, cue.masks, "test digits with their class's cue"))
    if SNOW in models:
        snowy, bare = snow_scenes("test", cue="label"), snow_scenes("test", cue="none")
        wolves = torch.nonzero(snowy.labels == 0)[:, 0]
        if not 1 <= n_images <= len(wolves):
            raise InputError(f"--n-images must lie in 1..{len(wolves)} for digits-snow, got {n_images}")
        w = wolves[:n_images]
        cases.append(Case(SNOW, SNOW, snowy.images[w], snowy.masks[w], "test wolves on snow", 0))
        cases.append(Case(SNOW_CONTROL, SNOW, bare.images[w], bare.bands[w],
                          "test wolves without the snow (the same wolves; class wolf explained, "
                          "scored against the empty band)", 0))
    return cases


def benchmark_methods() -> list[str]:
    """Every registered attribution method (gradient, cam, perturbation families)."""
    return [m.name for m in list_methods() if m.family in ATTRIBUTION_FAMILIES]


@dataclass
class BenchmarkResult:
    """What the benchmark measured.

    Attributes:
        rows: one dict per (case, method), keys :data:`LEADERBOARD_COLUMNS` and
            :data:`DETAIL_COLUMNS` (``model`` is the case's label).
        curves: (model, method) -> {"deletion"|"insertion": (fractions, mean curve)}.
        sanity: (model, method) -> cascading :class:`SanityResult`.
        settings: the parameters of the run.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    sanity: dict[tuple[str, str], SanityResult] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def sanity_rows(self) -> list[dict[str, Any]]:
        """Per-stage rows of every sanity check, with the model name."""
        out = []
        for (model, _), res in self.sanity.items():
            out += [{"model": model, **r} for r in res.rows()]
        return out

    def leaderboard(self, model: str) -> list[dict[str, Any]]:
        """Rows of ``model``, best pointing (±1 px, then mass) first, then methods that failed,
        reference rows last."""
        rows = [r for r in self.rows if r["model"] == model]
        ref = [r for r in rows if r["method"].startswith("(")]
        failed = [r for r in rows if r.get("error")]
        real = [r for r in rows if not r["method"].startswith("(") and not r.get("error")]
        real.sort(key=lambda r: (-r["max_within_1px"], -r["cue_mass"], r["method"]))
        return real + failed + ref


def planted_cue_benchmark(
    n_images: int = 48,
    *,
    methods: Sequence[str] | None = None,
    models: Sequence[str] = MODELS,
    steps: int = 16,
    n_sanity: int = 12,
    seed: int = 0,
    batch_size: int | str = "auto",
    options: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Run the planted-cue benchmark (see module docstring).

    Args:
        n_images: images scored per model (the first test digits; the first test wolves for
            ``digits-snow``).
        methods: method names (default: every registered attribution method).
        models: bundled model names, from :data:`ALL_MODELS` (default :data:`MODELS`).
        steps: deletion / insertion steps.
        n_sanity: digits used by the sanity check (0: skip it).
        seed: seed of the methods, the random reference map, tie-breaking and re-initialisation.
        batch_size: masked images per forward pass of the curves (``"auto"``: memory budget).
        options: ``"auto"``, ``"fast"`` or ``"default"`` method options (see module docstring).
        device: run on this device (default: CPU).
        progress: progress on stderr: a bar on a terminal, a line every 10 s elsewhere; the
            curves and sanity checks of the method in progress show in it (one bar for the run).
    """
    from convscope.methods.explain import explain

    names = list(methods) if methods is not None else benchmark_methods()
    for n in names:
        get_method(n)  # unknown names fail before any work
    if options not in ("auto", "fast", "default"):
        raise InputError(f"unknown options mode {options!r}; use auto, fast or default")
    cases = benchmark_cases(models, n_images)
    res = BenchmarkResult(settings={
        "n_images": n_images, "steps": steps, "n_sanity": min(n_sanity, n_images), "seed": seed,
        "baseline": CURVE_BASELINE, "score": "probability", "methods": names, "models": list(models),
        "sanity_threshold": DEFAULT_THRESHOLD, "options": options,
        "cases": {c.label: c.about for c in cases},
        "cue_share": {c.label: c.masks.float().mean().item() for c in cases},
    })
    dev = torch.device(check_device(device)) if device is not None else torch.device("cpu")
    loaded: dict[str, LoadedModel] = {}
    # one progress for the whole run: the methods and 2 reference maps of each case
    with Progress("benchmark", len(cases) * (len(names) + 2), enabled=progress, unit="maps") as bar:
        for case in cases:
            if case.model not in loaded:
                loaded[case.model] = _load(case.model)
            lm = loaded[case.model]
            lm.model.to(dev)
            masks = case.masks
            rnd = torch.rand(masks.shape, generator=torch.Generator().manual_seed(seed))
            x = lm.preprocessing.normalize(case.pixels).to(dev)
            refs: list[tuple[str, str, torch.Tensor | None]] = [
                (CUE_REF, "reference", masks.float()), (RANDOM_REF, "reference", rnd)]
            todo = [(n, get_method(n).family, None) for n in names] + refs
            for name, family, given in todo:
                bar.status(f"{case.label}: {name}")
                t0 = time.perf_counter()
                ex: MethodExplainer | None = None
                if given is None:
                    info = get_method(name)
                    fast = options == "fast" or (options == "auto" and info.black_box)
                    made = as_explainer(name, fast=fast, seed=seed)
                    assert isinstance(made, MethodExplainer)
                    ex = made
                    try:
                        with warnings.catch_warnings():  # the verdict is a column of the row, not a line
                            warnings.simplefilter("ignore", UnreliableResultWarning)
                            e = explain(lm, x, method=name, target=case.target, seed=seed, **ex.options)
                        maps = e.map
                        unreliable = [j for j, ok in enumerate(e.diagnostics.get("reliable", [])) if not ok]
                    except ConvscopeError as exc:  # a method that refuses this model: a row that says so
                        res.rows.append(_failed_row(case.label, name, family, ex, exc))
                        bar.advance()
                        continue
                else:
                    maps, unreliable = given, []
                maps = maps.float().cpu()
                kw = dict(baseline=CURVE_BASELINE, steps=steps, batch_size=batch_size, seed=seed,
                          targets=case.target)
                d = deletion(lm, x, maps.to(dev), **kw)
                i = insertion(lm, x, maps.to(dev), **kw)
                row: dict[str, Any] = {
                    "model": case.label, "method": name, "family": family,
                    "max_in_cue": pointing_hits(maps, masks, 0).float().mean().item(),
                    "max_within_1px": pointing_hits(maps, masks, 1).float().mean().item(),
                    "cue_mass": cue_mass(maps, masks).mean().item(),
                    "deletion": d.auc.mean().item(), "insertion": i.auc.mean().item(),
                    "sanity_similarity": None, "sanity": None,
                    "options": _options(ex), "error": "",
                    # images whose own diagnostics call the map unreliable (e.g. constant: no hit possible)
                    "unreliable": f"{len(unreliable)} of {len(maps)}" if unreliable else "",
                }
                res.curves[(case.label, name)] = {
                    "deletion": (d.fractions.numpy(), d.mean_curve().numpy()),
                    "insertion": (i.fractions.numpy(), i.mean_curve().numpy()),
                }
                k = min(n_sanity, n_images)
                if ex is not None and k > 0:
                    s = model_randomization(lm, x[:k], ex, maps=maps[:k].to(dev), seed=seed,
                                            targets=d.targets[:k], progress=None)
                    res.sanity[(case.label, name)] = s
                    row["sanity_similarity"] = s.similarity
                    row["sanity"] = "pass" if s.passed else "FAIL"
                row["seconds"] = time.perf_counter() - t0
                res.rows.append(row)
                bar.advance()
    return res


def _load(name: str) -> LoadedModel:
    if name == GREY:
        from convscope.methods.evaluation._triggered import grey_triggered

        return grey_triggered()
    return load_model(name)


def _options(ex: MethodExplainer | None) -> str:
    return "" if ex is None else ", ".join(f"{k}={v}" for k, v in ex.options.items())


def _failed_row(label: str, method: str, family: str, ex: MethodExplainer,
                exc: ConvscopeError) -> dict[str, Any]:
    """The row of a method that refused the model: no scores, the reason in ``error``."""
    row: dict[str, Any] = dict.fromkeys(LEADERBOARD_COLUMNS)
    row.update(model=label, method=method, family=family, options=_options(ex), error=str(exc),
               unreliable="", seconds=0.0)
    return row
