"""``convscope demo``: the wolf-vs-husky story told with digits, offline, on the bundled models.

Two copies of one small CNN: ``digits-cnn`` learned the digits; ``digits-cnn-cue`` was trained on
digits carrying a class-dependent white square in the frame, the "snow" of this project. Both
score the same images; the report shows where each one looks, for every registered attribution
method, and how often each method's maximum falls on the cue.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .api import explain
from .datasets import digits, planted_cue
from .evaluation.pointing import cue_mass, pointing_hits
from .models import load_model
from .registry import list_methods
from .report import Report, bars_of

__all__ = ["demo_methods", "run_demo"]

ATTRIBUTION_FAMILIES = ("gradient", "cam", "perturbation")


def demo_methods() -> list[str]:
    """Every registered attribution method (the demo grows as methods land)."""
    return [m.name for m in list_methods() if m.family in ATTRIBUTION_FAMILIES]


def run_demo(out_dir: Path, n_images: int = 6, n_eval: int = 100, progress: bool = True) -> Path:
    """Build the demo report in ``out_dir`` and return the path of ``report.html``."""
    from tqdm.auto import tqdm

    models = {name: load_model(name) for name in ("digits-cnn", "digits-cnn-cue")}
    data = digits()
    x, y = data.split("test")
    cue = planted_cue(x, y)
    wrong = (y + 1 + torch.arange(len(y)) % 9) % 10
    swapped = planted_cue(x, y, cue_classes=wrong)
    pre = models["digits-cnn"].preprocessing

    rep = Report(
        "convscope demo: is the model reading the digit or the snow?",
        "Two copies of one small CNN. digits-cnn learned the digits. digits-cnn-cue was trained on "
        "digits that carry a small white square whose position gives the class away, as snow gave "
        "away 'wolf' in the husky photos. Both models score well on their test set. The "
        "explanations below show which one learned the digit.",
    )
    rows = []
    for name, lm in models.items():
        m = lm.card["metrics"]
        rows.append([name, lm.card["summary"]] + [f"{k} = {v:.3f}" for k, v in m.items()])
    rep.section(
        "The two models (from their model cards)",
        "The cue model is perfect when the cue is there, near chance without it, and follows a cue "
        "planted for the wrong class: it reads the square, not the digit.",
        table=[[r[0], r[1], "; ".join(r[2:])] for r in rows],
        table_header=["model", "summary", "test metrics"],
    )

    methods = demo_methods()
    idx = list(range(n_images))
    batch = pre.normalize(cue.images[idx])
    sec = rep.section(
        "Where each model looks, on digits that carry the cue",
        "Each row is one model and method; each column one test digit with its class's cue in the "
        "frame. Bars: the model's top-3 probabilities. Red/yellow: what the method credits.",
    )
    inputs_row = []
    for i in idx:
        inputs_row.append(Report.figure(_big(cue.images[i]), title=f"digit {int(y[i])}",
                                        caption="input with cue"))
    sec.rows.append(inputs_row)
    sec.row_labels.append("inputs")
    for mname in tqdm(methods, desc="demo: methods", disable=not progress):
        info = next(mm for mm in list_methods() if mm.name == mname)
        for name, lm in models.items():
            e = explain(lm, batch, method=mname)
            figs = []
            for j in range(len(idx)):
                probs = e.probabilities[j].tolist()
                figs.append(Report.figure(e.overlay(j), title=f"pred {e.target_name(j)}",
                                          bars=bars_of(probs, lm.class_names),
                                          colorbar="signed" if e.signed else "unsigned"))
            sec.rows.append(figs)
            sec.row_labels.append(f"{name} · {mname}: {info.summary}")

    # The swapped cue: the cue model follows the square.
    sw = pre.normalize(swapped.images[idx])
    sec2 = rep.section(
        "Swap the cue: plant another class's square",
        "The same digits with the square of a different class. The clean model still reads the "
        "digit; the cue model now predicts the class of the square, and saliency shows why.",
    )
    for name, lm in models.items():
        e = explain(lm, sw, method="saliency")
        sec2.rows.append([
            Report.figure(e.overlay(j), title=f"digit {int(y[i])}, cue {int(wrong[i])}",
                          caption=f"predicts {e.target_name(j)}",
                          bars=bars_of(e.probabilities[j].tolist(), lm.class_names))
            for j, i in enumerate(idx)
        ])
        sec2.row_labels.append(name)

    # Pointing rates.
    n = min(n_eval, len(y))
    xb = pre.normalize(cue.images[:n])
    table = []
    for mname in tqdm(methods, desc="demo: pointing game", disable=not progress):
        row = [mname]
        for name, lm in models.items():
            e = explain(lm, xb, method=mname)
            strict = pointing_hits(e.map, cue.masks[:n], 0).float().mean().item()
            tol = pointing_hits(e.map, cue.masks[:n], 1).float().mean().item()
            mass = cue_mass(e.map, cue.masks[:n]).mean().item()
            row += [f"{strict:.2f}", f"{tol:.2f}", f"{mass:.2f}"]
        table.append(row)
    rep.section(
        f"How often does each method point at the cue? ({n} test digits with the cue)",
        "Share of images whose map maximum lies inside the cue (strict) or within 1 pixel of it, "
        "and the share of positive attribution mass inside the cue (the cue covers 1.6% of the "
        "image). A method that works points at the cue for the cue model and away from it for "
        "the clean model.",
        table=table,
        table_header=["method"] + [f"{m} {k}" for m in models for k in ("max in cue", "±1 px", "mass")],
    )
    _featvis_section(rep, models)
    out_dir.mkdir(parents=True, exist_ok=True)
    return rep.write(out_dir / "report.html")


def _featvis_section(rep: Report, models: dict) -> None:
    """Class model visualisations (Simonyan et al.) of every digit, for both models."""
    from PIL import ImageDraw

    from .datasets import CUE_POSITIONS
    from .featvis import visualize_class
    from .featvis.transforms import jitter

    sec = rep.section(
        "What does each model think a digit looks like? Class visualisations",
        "For each class, an image optimised from a black frame to maximise that class's logit "
        "(Simonyan et al. 2014: gradient ascent on pixels with an L2 penalty, 1-pixel jitter). The "
        "red outline marks the class's cue square. The clean model paints stroke fragments over the "
        "whole image; the cue model paints white squares along the edge of the frame that holds "
        "its cue: it has learned the snow. Bars: what the model predicts for the image. A high "
        "logit need not win the softmax (it can rise together with other classes' logits); "
        "convscope.visualize_class(objective='prob') maximises the probability instead.",
    )
    for name, lm in models.items():
        v = visualize_class(lm, param="pixel", l2=30.0, init="mean", transforms=[jitter(1)],
                            steps=150, lr=0.05, progress=False)
        figs = []
        for c in range(len(v)):
            img = v.image(c, min_side=224)
            k = img.width // 32
            r0, c0 = CUE_POSITIONS[c]
            ImageDraw.Draw(img).rectangle([c0 * k - 1, r0 * k - 1, (c0 + 4) * k, (r0 + 4) * k],
                                          outline=(255, 40, 40), width=2)
            probs = v.probabilities[c].tolist() if v.probabilities is not None else []
            figs.append(Report.figure(img, title=f"class {lm.class_names[c]}",
                                      caption=f"logit {float(v.scores[c]):.1f}",
                                      bars=bars_of(probs, lm.class_names) if probs else []))
        sec.rows.append(figs)
        sec.row_labels.append(f"{name} · class visualisations")


def _big(img: torch.Tensor):
    from .models.preprocessing import display_array
    from .results import _upscale

    return _upscale(display_array(img), 224)
