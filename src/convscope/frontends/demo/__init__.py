"""``convscope demo``: the wolf-vs-husky story told with digits, offline, on the bundled models.

Two copies of one small CNN: ``digits-cnn`` learned the digits; ``digits-cnn-cue`` was trained on
digits carrying a class-dependent texture in a corner, the "snow" of this project. Both
score the same images; the report shows where each one looks, for every registered attribution
method (read from the registry, so new methods appear by themselves), how often each method's
maximum falls on the cue, the same for ``digits-snow`` (wolves vs huskies in colour scenes: it
learned that snow means wolf), LIME for text on a corpus whose junk header word gives the label away,
and (when feature visualisation is installed) class visualisations of the digits.

Speed: each method runs with its defaults unless a timed probe shows the defaults would take
longer than ``budget_s`` seconds for the whole demo; then it runs with the registry's
``fast_options`` and the report says so, with the projected time of the defaults.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from convscope.core.document import model_rows
from convscope.core.errors import ConvscopeError
from convscope.core.progress import Progress
from convscope.data.toydata import digits, planted_cue
from convscope.frontends.demo._concepts import concept_section
from convscope.frontends.demo._crp import crp_section
from convscope.frontends.demo._sections import (
    ATTRIBUTION_FAMILIES,
    _adversarial_section,
    _audit_section,
    _big,
    _compare_section,
    _dataset_section,
    _each_method,
    _featvis_section,
    _lime_text_section,
    _n_scored,
    _snow_section,
)
from convscope.frontends.demo._trust import trust_section
from convscope.frontends.demo._vit import vit_section
from convscope.frontends.report import Report
from convscope.frontends.report.build import explanation_figure, method_note
from convscope.methods.evaluation.pointing import cue_mass, pointing_hits
from convscope.methods.explain import explain
from convscope.methods.registry import MethodInfo, list_methods
from convscope.models import load_model

__all__ = ["ATTRIBUTION_FAMILIES", "STAGES", "choose_settings", "demo_methods", "run_demo"]

STAGES = ("models", "timing methods", "methods", "swapped cue", "pointing game", "which method to trust",
          "digits-snow", "concepts (LRP)", "vision transformer", "concept test", "lime text",
          "class visualisations", "compare", "dataset", "audit", "adversarial", "model cards")
"""The demo's stages, in order: its progress counts them."""


def demo_methods() -> list[str]:
    """Every registered attribution method (the demo grows as methods land)."""
    return [m.name for m in list_methods() if m.family in ATTRIBUTION_FAMILIES]


def choose_settings(
    info: MethodInfo, lm: Any, probe: torch.Tensor, n_total: int, budget_s: float
) -> tuple[dict[str, Any], str, float]:
    """Options for ``info`` in the demo: ``{}`` (defaults) or its ``fast_options``, why, and the
    measured seconds per image with those options.

    The defaults are timed on ``probe`` (a small batch) and projected linearly to ``n_total``
    images; above ``budget_s`` the method switches to its fast settings, if it has any. Times are
    this process's CPU time, so other work on a shared machine does not change the choice much.
    """
    t0 = time.process_time()
    explain(lm, probe, method=info.name)
    per_image = (time.process_time() - t0) / probe.shape[0]
    projected = per_image * n_total
    if projected <= budget_s or not info.fast_options:
        return {}, "defaults", per_image
    opts = dict(info.fast_options)
    t0 = time.process_time()
    explain(lm, probe, method=info.name, **opts)
    per_image = (time.process_time() - t0) / probe.shape[0]
    shown = ", ".join(f"{k}={v}" for k, v in opts.items())
    why = f"fast settings ({shown}): the defaults would take about {projected:.0f} CPU-seconds here"
    return opts, why, per_image


def run_demo(
    out_dir: str | Path, *, n_images: int = 6, n_eval: int = 100, progress: bool = True, budget_s: float = 3.0
) -> Path:
    """Build the demo report in ``out_dir`` and return the path of ``report.html``.

    Args:
        out_dir: folder for ``report.html`` (created).
        n_images: digits shown per panel.
        n_eval: cue digits scored in the pointing table.
        progress: progress on stderr: one bar for the whole demo on a terminal, a line every
            10 s elsewhere; each stage's loop (and the explanation in progress) shows in it.
        budget_s: seconds a method may take over the whole demo with its defaults before it is
            run with its fast settings (see the module docstring); a method still slower is
            scored on fewer digits (at least 20) in the pointing table, which says so.
    """
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    with Progress("demo", len(STAGES), enabled=progress, unit="stages") as bar:
        rep = _demo_report(bar, n_images, n_eval, progress, budget_s)
    rep.intro += f" Built in {time.perf_counter() - t_start:.0f} s, offline."
    out_dir.mkdir(parents=True, exist_ok=True)
    return rep.write(out_dir / "report.html")


def _demo_report(bar: Progress, n_images: int, n_eval: int, progress: bool, budget_s: float) -> Report:
    """The demo's report, stage by stage (:data:`STAGES`), counted by ``bar``; arguments as for
    :func:`run_demo`."""

    def stage(name: str) -> None:
        """The stages before ``name`` are done; show ``name`` as the one in progress."""
        bar.update(STAGES.index(name))
        bar.status(name)

    stage("models")
    models = {name: load_model(name) for name in ("digits-cnn", "digits-cnn-cue")}
    data = digits()
    x, y = data.split("test")
    cue = planted_cue(x, y)
    wrong = (y + 1 + torch.arange(len(y)) % 9) % 10
    swapped = planted_cue(x, y, cue_classes=wrong)
    pre = models["digits-cnn"].preprocessing
    n = min(n_eval, len(y))

    rep = Report(
        "convscope demo: is the model reading the digit or the snow?",
        "Two copies of one small CNN. digits-cnn learned the digits. digits-cnn-cue was trained on "
        "digits that carry a small texture in a corner (stripes, checkers, ...) that gives the class "
        "away, as snow gave away 'wolf' in the husky photos. Both models score well on their test set. The "
        "explanations below show which one learned the digit.",
    )
    rows = []
    for name, lm in models.items():
        m = lm.card["metrics"]
        rows.append([name, lm.card["summary"]] + [f"{k} = {v:.3f}" for k, v in m.items()])
    rep.section(
        "The two digit models (from their model cards; digits-snow has its own section)",
        "The cue model is perfect when the cue is there, near chance without it, and follows a cue "
        "planted for the wrong class: it reads the texture, not the digit.",
        table=[[r[0], r[1], "; ".join(r[2:])] for r in rows],
        table_header=["model", "summary", "test metrics"],
    )

    infos = [m for m in list_methods() if m.family in ATTRIBUTION_FAMILIES]
    probe = pre.normalize(cue.images[:2])
    settings: dict[str, tuple[dict[str, Any], str, float]] = {}
    stage("timing methods")
    for info in _each_method(infos):
        settings[info.name] = choose_settings(info, models["digits-cnn-cue"], probe,
                                              len(models) * (n_images + n), budget_s)

    stage("methods")
    idx = list(range(n_images))
    batch = pre.normalize(cue.images[idx])
    sec = rep.section(
        "Where each model looks, on digits that carry the cue",
        "For each method, the clean model (upper row) and the cue model (lower row) explain the "
        "same test digits, each with its class's cue in a corner. Bars: the model's top-3 "
        "probabilities. The colour shows what the method credits (sequential maps: bright = more; "
        "signed maps: red for, blue against). A method that works lights up the digit for the "
        "clean model and the cue texture for the cue model.",
    )
    sec.rows.append([Report.figure(_big(cue.images[i]), title=f"digit {int(y[i])}",
                                   caption="input with cue") for i in idx])
    sec.row_labels.append("inputs")
    sec.row_notes.append("")
    failures: dict[str, str] = {}
    for info in _each_method(infos):
        opts, why, _ = settings[info.name]
        for k, (name, lm) in enumerate(models.items()):
            try:
                e = explain(lm, batch, method=info.name, **opts)
            except ConvscopeError as exc:  # shown in the report, never fatal for the demo
                failures[info.name] = str(exc)
                break
            sec.rows.append([explanation_figure(e, j, bars=3, title=f"pred {e.target_name(j)}")
                             for j in range(len(idx))])
            role = "clean model" if name == "digits-cnn" else "cue model"
            sec.row_labels.append(f"{info.name} · {role} {name}")
            note = method_note(info) + ("" if why == "defaults" else f" Ran with {why}.")
            sec.row_notes.append(note if k == 0 else "")

    # The swapped cue: the cue model follows the texture.
    stage("swapped cue")
    sw = pre.normalize(swapped.images[idx])
    sec2 = rep.section(
        "Swap the cue: plant another class's texture",
        "The same digits with the cue texture of a different class. The clean model still reads the "
        "digit; the cue model now predicts the class of the texture, and saliency shows why.",
    )
    for name, lm in models.items():
        e = explain(lm, sw, method="saliency")
        sec2.rows.append([
            explanation_figure(e, j, bars=3, title=f"digit {int(y[i])}, cue {int(wrong[i])}",
                               caption=f"predicts {e.target_name(j)}", colorbar=None)
            for j, i in enumerate(idx)
        ])
        sec2.row_labels.append(name)

    # Pointing rates.
    stage("pointing game")
    xb = pre.normalize(cue.images[:n])
    table = []
    for info in _each_method(infos):
        if info.name in failures:
            continue
        opts, why, per_image = settings[info.name]
        m = _n_scored(n, budget_s, per_image * len(models))
        row = [info.name if m == n else f"{info.name} ({m} digits)"]
        for lm in models.values():
            e = explain(lm, xb[:m], method=info.name, **opts)
            strict = pointing_hits(e.map, cue.masks[:m], 0).float().mean().item()
            tol = pointing_hits(e.map, cue.masks[:m], 1).float().mean().item()
            mass = cue_mass(e.map, cue.masks[:m]).mean().item()
            row += [f"{strict:.2f}", f"{tol:.2f}", f"{mass:.2f}"]
        table.append(row + [why])
    for name, msg in failures.items():
        table.append([name] + ["–"] * 6 + [f"failed: {msg}"])
    rep.section(
        f"How often does each method point at the cue? ({n} test digits with the cue)",
        "Share of images whose map maximum lies inside the cue (strict) or within 1 pixel of it, "
        "and the share of positive attribution mass inside the cue (the cue covers 6.25% of "
        "the image). A method that works points at the cue for the cue model and away from it for "
        "the clean model.",
        table=table,
        table_header=["method"] + [f"{m} {k}" for m in models for k in ("max in cue", "±1 px", "mass")]
        + ["settings"],
    )

    stage("which method to trust")
    trust_section(rep, models, cue)
    stage("digits-snow")
    _snow_section(rep, settings, n_images, n_eval, budget_s, progress)
    stage("concepts (LRP)")
    crp_section(rep)
    stage("vision transformer")
    vit_section(rep, cue, models["digits-cnn-cue"], n_images, n_eval)
    stage("concept test")
    concept_section(rep)
    stage("lime text")
    _lime_text_section(rep)
    stage("class visualisations")  # the feature-visualisation section (convscope.methods.featvis)
    _featvis_section(rep, models)
    stage("compare")
    _compare_section(rep, models, cue)
    stage("dataset")
    _dataset_section(rep, models)
    stage("audit")
    _audit_section(rep, models, progress)
    stage("adversarial")
    _adversarial_section(rep, models)
    stage("model cards")
    for name in ("digits-cnn", "digits-cnn-cue", "digits-snow", "digits-watermark", "digits-marker"):
        rep.section(
            f"The model {name}, as convscope used it",
            "Loaded from its model card (convscope/models/weights); every map above records this "
            "in its metadata. Nothing was assumed where the 'assumed' rows are absent.",
            table=model_rows(models.get(name) or load_model(name)),
            table_header=["", "value"],
        )

    bar.update(len(STAGES))
    return rep
