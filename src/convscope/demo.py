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

from .api import explain
from .datasets import digits, planted_cue
from .errors import ConvscopeError
from .evaluation.pointing import cue_mass, pointing_hits
from .models import load_model
from .registry import MethodInfo, list_methods
from .report import Report, bars_of
from .report.build import method_note

__all__ = ["choose_settings", "demo_methods", "run_demo"]

ATTRIBUTION_FAMILIES = ("gradient", "cam", "perturbation")


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
    out_dir: Path,
    n_images: int = 6,
    n_eval: int = 100,
    progress: bool = True,
    budget_s: float = 3.0,
) -> Path:
    """Build the demo report in ``out_dir`` and return the path of ``report.html``.

    Args:
        out_dir: folder for ``report.html`` (created).
        n_images: digits shown per panel.
        n_eval: cue digits scored in the pointing table.
        progress: progress bars on stderr.
        budget_s: seconds a method may take over the whole demo with its defaults before it is
            run with its fast settings (see the module docstring); a method still slower is
            scored on fewer digits (at least 20) in the pointing table, which says so.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
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
    for info in tqdm(infos, desc="demo: timing methods", disable=not progress):
        settings[info.name] = choose_settings(info, models["digits-cnn-cue"], probe,
                                              len(models) * (n_images + n), budget_s)

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
    for info in tqdm(infos, desc="demo: methods", disable=not progress):
        opts, why, _ = settings[info.name]
        for k, (name, lm) in enumerate(models.items()):
            try:
                e = explain(lm, batch, method=info.name, **opts)
            except ConvscopeError as exc:  # shown in the report, never fatal for the demo
                failures[info.name] = str(exc)
                break
            sec.rows.append([
                Report.figure(e.overlay(j), title=f"pred {e.target_name(j)}",
                              bars=_bars(e, j, lm.class_names),
                              colorbar="signed" if e.signed else "unsigned")
                for j in range(len(idx))
            ])
            role = "clean model" if name == "digits-cnn" else "cue model"
            sec.row_labels.append(f"{info.name} · {role} {name}")
            note = method_note(info) + ("" if why == "defaults" else f" Ran with {why}.")
            sec.row_notes.append(note if k == 0 else "")

    # The swapped cue: the cue model follows the texture.
    sw = pre.normalize(swapped.images[idx])
    sec2 = rep.section(
        "Swap the cue: plant another class's texture",
        "The same digits with the cue texture of a different class. The clean model still reads the "
        "digit; the cue model now predicts the class of the texture, and saliency shows why.",
    )
    for name, lm in models.items():
        e = explain(lm, sw, method="saliency")
        sec2.rows.append([
            Report.figure(e.overlay(j), title=f"digit {int(y[i])}, cue {int(wrong[i])}",
                          caption=f"predicts {e.target_name(j)}",
                          bars=_bars(e, j, lm.class_names))
            for j, i in enumerate(idx)
        ])
        sec2.row_labels.append(name)

    # Pointing rates.
    xb = pre.normalize(cue.images[:n])
    table = []
    for info in tqdm(infos, desc="demo: pointing game", disable=not progress):
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

    _snow_section(rep, settings, n_images, n_eval, budget_s, progress)
    _lime_text_section(rep)
    # class visualisations: the feature-visualisation section (convscope.featvis) goes here
    _featvis_section(rep, models)
    _compare_section(rep, models, cue)
    _dataset_section(rep, models)
    _audit_section(rep, models, progress)
    _adversarial_section(rep, models)
    from .report.build import model_rows

    for name in ("digits-cnn", "digits-cnn-cue", "digits-snow", "digits-watermark"):
        rep.section(
            f"The model {name}, as convscope used it",
            "Loaded from its model card (convscope/models/weights); every map above records this "
            "in its metadata. Nothing was assumed where the 'assumed' rows are absent.",
            table=model_rows(models.get(name) or load_model(name)),
            table_header=["", "value"],
        )

    rep.intro += f" Built in {time.perf_counter() - t_start:.0f} s, offline."
    out_dir.mkdir(parents=True, exist_ok=True)
    return rep.write(out_dir / "report.html")


def _n_scored(n: int, budget_s: float, seconds_per_image: float) -> int:
    """How many of ``n`` images a method is scored on: all, or as many as ``budget_s`` allows (at
    least 20), so slow methods keep the demo quick."""
    return max(min(n, 20), min(n, int(budget_s / max(seconds_per_image, 1e-9))))


def _snow_section(
    rep: Report,
    settings: dict[str, tuple[dict[str, Any], str, float]],
    n_images: int,
    n_eval: int,
    budget_s: float,
    progress: bool,
) -> None:
    """digits-snow: where each method looks on wolves standing on snow, and how often it hits the
    snow (against the same wolves without snow).

    Args:
        settings: method -> (options, why, seconds per image), as :func:`choose_settings` chose
            them for the digits models (not timed again: the snow model costs about as much).
        n_images, n_eval, budget_s, progress: as for :func:`run_demo`.
    """
    from tqdm.auto import tqdm

    from .datasets import snow_scenes

    lm = load_model("digits-snow")
    snowy, bare, swapped = (snow_scenes("test", cue=c) for c in ("label", "none", "swapped"))
    wolves = torch.nonzero(snowy.labels == 0)[:, 0]
    huskies = torch.nonzero(snowy.labels == 1)[:, 0]
    n = min(n_eval, len(wolves))
    show, ev = wolves[:n_images], wolves[:n]
    metrics = lm.card["metrics"]
    sec = rep.section(
        "A second cue of another kind: digits-snow, the wolf-vs-husky snow detector",
        "A small RGB network (written with functional ReLUs, no input normalisation, like many "
        "users' own models) tells 'wolves' (digits 0-4) from 'huskies' (5-9) in 48x48 colour scenes. "
        "In its training scenes almost every wolf stood on snow, a white band along the bottom, "
        "and almost no husky did. From its card: test accuracy "
        f"{metrics['test_accuracy_with_cue']:.2f} with the snow on the wolves, "
        f"{metrics['test_accuracy_without_cue']:.2f} without any snow (it recognises "
        f"{metrics['test_wolf_recall_without_cue']:.0%} of the wolves then), and with the snow moved "
        f"onto the huskies it follows the snow {metrics['test_follows_swapped_cue']:.0%} of the time. "
        "Below, each method explains wolves on snow; a method that shows what the model uses "
        "lights up the snow, not the animal. The row note gives the method's hit rate: the share "
        f"of {n} snowy test wolves whose map maximum lies in the snow band (and of the same "
        "wolves without snow whose maximum lies where the band was).",
    )
    sec.rows.append([Report.figure(_big(snowy.images[i]), title=f"digit {int(snowy.digits[i])}",
                                   caption="wolf on snow") for i in show])
    sec.row_labels.append("inputs")
    sec.row_notes.append("")
    infos = [m for m in list_methods() if m.family in ATTRIBUTION_FAMILIES]
    x_show = lm.preprocessing.normalize(snowy.images[show])
    x_ev, x_bare = (lm.preprocessing.normalize(s.images[ev]) for s in (snowy, bare))
    table = []
    for info in tqdm(infos, desc="demo: digits-snow", disable=not progress):
        opts, why, per_image = settings[info.name]
        try:
            e = explain(lm, x_show, method=info.name, target="wolf", **opts)
        except ConvscopeError as exc:  # e.g. plain CAM: conv4 comes before a functional ReLU
            table.append([info.name] + ["–"] * 3 + [f"refused: {exc}"])
            continue
        m = _n_scored(n, budget_s, 2 * per_image)
        hit = pointing_hits(explain(lm, x_ev[:m], method=info.name, target="wolf", **opts).map,
                            snowy.masks[ev[:m]]).float().mean().item()
        ctrl = pointing_hits(explain(lm, x_bare[:m], method=info.name, target="wolf", **opts).map,
                             bare.bands[ev[:m]]).float().mean().item()
        mass = cue_mass(e.map, snowy.masks[show]).mean().item()
        table.append([info.name if m == n else f"{info.name} ({m} wolves)", f"{hit:.2f}",
                      f"{ctrl:.2f}", f"{mass:.2f}", why])
        sec.rows.append([
            Report.figure(e.overlay(j), title=f"pred {e.target_name(j)}",
                          bars=_bars(e, j, lm.class_names),
                          colorbar="signed" if e.signed else "unsigned")
            for j in range(len(show))
        ])
        sec.row_labels.append(f"{info.name} · digits-snow")
        note = f"Maximum on the snow for {hit:.0%} of {m} snowy wolves (without snow, in the empty " \
               f"band: {ctrl:.0%})."
        sec.row_notes.append(note + ("" if why == "defaults" else f" Ran with {why}."))
    sw = swapped.images[huskies[:n_images]]
    e = explain(lm, lm.preprocessing.normalize(sw), method="gradcam")
    sec.rows.append([Report.figure(e.overlay(j), title=f"digit {int(swapped.digits[i])}",
                                   caption=f"predicts {e.target_name(j)}",
                                   bars=_bars(e, j, lm.class_names))
                     for j, i in enumerate(huskies[:n_images].tolist())])
    sec.row_labels.append("huskies on snow · gradcam")
    sec.row_notes.append("Huskies put on snow: the model calls them wolves, and Grad-CAM shows the "
                         "snow is why.")
    rep.section(
        f"How often does each method point at the snow? ({n} snowy test wolves)",
        "Share of snowy wolves whose map maximum lies in the snow band; the same for the same "
        "wolves without snow, scored against the band where the snow was (the control: the class "
        "wolf is explained in both, though without snow the model calls them huskies); and the "
        f"share of positive attribution mass on the snow in the {len(show)} wolves shown above (the "
        "band is a quarter to a third of the scene).",
        table=table,
        table_header=["method", "max on snow", "control: max in empty band", "mass on snow",
                      "settings"],
    )


def _lime_text_section(rep: Report) -> None:
    """LIME for text on the junk-header corpus: the header word gives the label away."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from .attribution.lime_text import explain_text
    from .datasets import junk_header_corpus

    train = junk_header_corpus(400, seed=0)
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, max_iter=1000))
    pipe.fit(train.texts, train.labels)
    test = junk_header_corpus(200, seed=1)
    acc = float((pipe.predict(test.texts) == test.labels).mean())
    clean = junk_header_corpus(200, seed=2, junk_rate=0.0)
    acc_clean = float((pipe.predict(clean.texts) == clean.labels).mean())
    doc = next(t for t, lab in zip(test.texts, test.labels, strict=True) if lab == 1)
    e = explain_text(pipe.predict_proba, doc, class_names=train.class_names, seed=0)
    top_word = e.top(1)[0][0] if e.top(1) else ""
    found = "is" if top_word == train.junk_token else "is not"
    sec = rep.section(
        "The same story in text: LIME on a classifier that reads the header",
        f"A TF-IDF + logistic regression classifier learns to tell alt.atheism from sci.space posts "
        f"in a synthetic newsgroup corpus where every sci.space post was sent from the host "
        f"'{train.junk_token}'. Test accuracy {acc:.2f}; on posts without that header word "
        f"{acc_clean:.2f}. LIME ({e.n_samples} perturbed texts) explains one sci.space post: the "
        f"word with the largest weight {found} the junk host name '{train.junk_token}'.",
    )
    sec.html_blocks.append(e.to_html(k=8))


def _bars(e: Any, j: int, class_names: list[str]) -> list:
    """Top-class bars of image ``j`` of an explanation or visualisation (none without
    probabilities)."""
    return bars_of(e.probabilities[j].tolist(), class_names) if e.probabilities is not None else []


def _featvis_section(rep: Report, models: dict) -> None:
    """Class model visualisations (Simonyan et al.) of every digit, for both models."""
    from PIL import Image

    from .datasets import CUE_PATTERNS
    from .featvis import visualize_class
    from .featvis.transforms import jitter

    sec = rep.section(
        "What does each model think a digit looks like? Class visualisations",
        "For each class, an image optimised from a black frame to maximise that class's logit "
        "(Simonyan et al. 2014: gradient ascent on pixels with an L2 penalty, 1-pixel jitter). The "
        "first row shows each class's cue texture. The clean model paints stroke fragments over the "
        "whole image; the cue model paints its class's texture (lines, gratings, checkers) over "
        "the whole image, wherever it fits: it has learned the snow. Bars: what the model "
        "predicts for the image. A high logit need not win the softmax (it can rise together "
        "with other classes' logits); "
        "convscope.visualize_class(objective='prob') maximises the probability instead.",
    )
    cues = [Report.figure(Image.fromarray((CUE_PATTERNS[c] * 255).byte().numpy(), "L")
                          .resize((224, 224), Image.Resampling.NEAREST), title=f"cue of class {c}")
            for c in range(len(CUE_PATTERNS))]
    sec.rows.append(cues)
    sec.row_labels.append("the cue textures")
    for name, lm in models.items():
        v = visualize_class(lm, param="pixel", l2=30.0, init="mean", transforms=[jitter(1)],
                            steps=150, lr=0.05, progress=False)
        figs = []
        for c in range(len(v)):
            img = v.image(c, min_side=224)
            logit = f"logit {float(v.scores[c]):.1f}" if v.scores is not None else ""
            figs.append(Report.figure(img, title=f"class {lm.class_names[c]}", caption=logit,
                                      bars=_bars(v, c, lm.class_names)))
        sec.rows.append(figs)
        sec.row_labels.append(f"{name} · class visualisations")


def _dataset_section(rep: Report, models: dict) -> None:
    """Maximally activating test digits per channel of the last layer (convscope.dataset)."""
    from .dataset import top_activations
    from .datasets import digits as _digits
    from .datasets import planted_cue as _planted

    x, y = _digits().split("test")
    half = len(y) // 2  # half the test digits carry their cue, half are clean
    pix = torch.cat([_planted(x[:half], y[:half]).images, x[half:]])
    sec = rep.section(
        "Which images drive the last layer's channels? (maximally activating test digits)",
        "For channels of layer features.9, the test digits that activate them most, with the "
        "receptive field of the strongest position outlined (half of the digits carry their cue). "
        "The clean model's channels respond to strokes (a cue's bars next to a digit can look "
        "like strokes to it); the cue model's strongest channels respond to the cue textures in "
        "the corners, with activations several times larger.",
    )
    for name, lm in models.items():
        top = top_activations(lm, pix, "features.9", k=6, batch_size=128)
        live = [c for c in range(top.values.shape[0]) if float(top.values[c, 0]) > 0]
        order = sorted(live, key=lambda c: -float(top.values[c, 0]))[:6]
        grid = top.grid(order, style="image", cell=64)
        sec.rows.append([Report.figure(grid, title=f"{name}: 6 strongest channels",
                                       width=grid.width)])
        sec.row_labels.append(name)


def _compare_section(rep: Report, models: dict, cue: Any) -> None:
    """Classes side by side on one colour scale, and "why a rather than b" (convscope.grids)."""
    import io

    from PIL import Image

    from .grids import explain_classes, explain_methods

    x = models["digits-cnn"].preprocessing.normalize(cue.images[:1])
    sec = rep.section(
        "Compare classes and methods: why this digit rather than that one?",
        "Upper row: the clean model's three most probable classes for one test digit, explained by "
        "Grad-CAM on one colour scale (a dimmer panel has less attribution, not another "
        "normalisation). Lower row: the cue model asked why the predicted class rather than the "
        "runner-up (target pred-vs-top2), by four methods: signed maps show evidence for the "
        "predicted class in red and for the runner-up in blue. `convscope explain --compare top3` and "
        "`--method a,b,c --target pred-vs-top2` write these figures; see docs/compare.md.",
    )
    grids = [explain_classes(models["digits-cnn"], x, topk=3, method="gradcam"),
             explain_methods(models["digits-cnn-cue"], x, ["saliency", "gradcam", "integrated_gradients",
                                                            "occlusion"], target="pred-vs-top2")]
    for g, label in zip(grids, ("digits-cnn · classes", "digits-cnn-cue · pred-vs-top2"), strict=True):
        img = Image.open(io.BytesIO(g.png())).convert("RGB")
        sec.rows.append([Report.figure(img, pixelated=False, width=min(img.width, 1000))])
        sec.row_labels.append(label)


def _audit_section(rep: Report, models: dict, progress: bool) -> None:
    """The dataset audit (convscope.audit) of digits-watermark on a held-out folder in which class
    3 hides watermarked digits of other classes; the clean model audited on the same folder."""
    import tempfile

    from .dataset import audit
    from .dataset._audit_report import add_audit_sections
    from .datasets import watermark_folder

    with tempfile.TemporaryDirectory(prefix="convscope-demo-") as tmp:
        root = Path(tmp) / "held-out"
        truth = set(watermark_folder(root, part="test")["watermarked"])
        found = audit("digits-watermark", root, progress=None if progress else False)
        clean = audit(models["digits-cnn"], root, progress=None if progress else False,
                      embedding="none")
    c3 = next(c for c in found.classes if c.name == "3")
    flagged = {p for k in c3.clusters if k.suspect for p in (k.paths or [])}
    hit = len(flagged & truth)
    rep.section(
        "Which of a model's strategies are shortcuts? A dataset audit (convscope.audit)",
        f"digits-watermark learned that a small copyright sign in the corner means '3'. On a "
        f"held-out folder whose class 3 holds {c3.n - len(truth)} clean 3s and {len(truth)} "
        "watermarked digits of other classes, the audit explains every image for its label "
        "(Grad-CAM), clusters each class's maps spectrally and flags the clusters whose "
        "attribution sits on a small region the class's other images do not use. Below: the "
        "suspects, then class 3's eigengap, embedding and clusters. `convscope audit --data DIR "
        "--model SPEC -o OUT/` writes the same as OUT/report.html and OUT/audit.json.",
        table=[["digits-watermark", str(len(found.suspects)),
                f"{hit}/{len(flagged)}" if flagged else "-", f"{hit}/{len(truth)}"],
               ["digits-cnn (never saw the mark)", str(len(clean.suspects)), "-", "-"]],
        table_header=["model", "suspect clusters", "class 3: watermarked among flagged (precision)",
                      "watermarked found (recall)"],
    )
    add_audit_sections(rep, found, classes=["3"])


def _adversarial_section(rep: Report, models: dict) -> None:
    """Targeted PGD on the clean model (convscope.synthesis)."""
    import io

    from PIL import Image

    from .datasets import digits as _digits
    from .synthesis.adversarial import pgd

    x, y = _digits().split("test")
    lm = models["digits-cnn"]
    target = [(int(v) + 3) % 10 for v in y[:4]]
    res = pgd(lm, x[:4], eps=0.2, steps=20, target=target, seed=0, progress=False, space="pixels")
    img = Image.open(io.BytesIO(res._repr_png_())).convert("RGB")
    rep.section(
        "Fooling the clean model: targeted PGD within an L-inf budget of 0.2",
        "Projected gradient descent (Madry et al.) changes every pixel by at most 0.2 (in [0, 1] "
        "pixels) to make digits-cnn see the digit plus 3. Left: the input; middle: the "
        "perturbation, magnified; right: the adversarial image and what the model now predicts. "
        f"Success: {int(res.success.sum())}/{len(target)}.",
        rows=[[Report.figure(img, title="original | perturbation | adversarial",
                             width=min(img.width, 640), pixelated=False)]],
    )


def _big(img: torch.Tensor) -> Any:
    from .models.preprocessing import display_array
    from .results import upscale

    return upscale(display_array(img), 224)
