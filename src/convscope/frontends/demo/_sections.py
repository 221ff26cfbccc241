"""The demo's sections beyond the digit models' own (see :mod:`convscope.frontends.demo`): digits-snow,
LIME on text, class visualisations, top activations, class and method grids, the audit and an
adversarial example. Each appends its sections to the report it is given."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Any

import torch

from convscope.core.errors import ConvscopeError
from convscope.core.progress import Track
from convscope.frontends.report import Report
from convscope.frontends.report.build import explanation_figure, top_k
from convscope.methods.evaluation.pointing import cue_mass, pointing_hits
from convscope.methods.explain import explain
from convscope.methods.registry import MethodInfo, list_methods
from convscope.models import load_model

ATTRIBUTION_FAMILIES = ("gradient", "cam", "perturbation")


def _n_scored(n: int, budget_s: float, seconds_per_image: float) -> int:
    """How many of ``n`` images a method is scored on: all, or as many as ``budget_s`` allows (at
    least 20), so slow methods keep the demo quick."""
    return max(min(n, 20), min(n, int(budget_s / max(seconds_per_image, 1e-9))))


def _each_method(infos: list[MethodInfo], progress: bool | None = None) -> Track[MethodInfo]:
    """Iterate ``infos`` with progress (inside the demo's: its sub-status ``method k/n: name``)."""
    return Track(infos, "method", label=attrgetter("name"), enabled=progress)


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
    from convscope.data.toydata import snow_scenes

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
    for info in _each_method(infos, None if progress else False):
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
        sec.rows.append([explanation_figure(e, j, bars=3, title=f"pred {e.target_name(j)}")
                         for j in range(len(show))])
        sec.row_labels.append(f"{info.name} · digits-snow")
        note = f"Maximum on the snow for {hit:.0%} of {m} snowy wolves (without snow, in the empty " \
               f"band: {ctrl:.0%})."
        sec.row_notes.append(note + ("" if why == "defaults" else f" Ran with {why}."))
    sw = swapped.images[huskies[:n_images]]
    e = explain(lm, lm.preprocessing.normalize(sw), method="gradcam")
    sec.rows.append([explanation_figure(e, j, bars=3, title=f"digit {int(swapped.digits[i])}",
                                        caption=f"predicts {e.target_name(j)}", colorbar=None)
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

    from convscope.data.toydata import junk_header_corpus
    from convscope.methods.attribution.lime_text import explain_text

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


def _bars(v: Any, j: int, class_names: list[str]) -> list:
    """Top-3 class bars of image ``j`` of a visualisation (none without probabilities)."""
    return top_k(v.probabilities[j].tolist(), class_names) if v.probabilities is not None else []


def _featvis_section(rep: Report, models: dict) -> None:
    """Class model visualisations (Simonyan et al.) of every digit, for both models."""
    from PIL import Image

    from convscope.data.toydata import CUE_PATTERNS
    from convscope.methods.featvis import visualize_class
    from convscope.methods.featvis.transforms import jitter

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
                            steps=150, lr=0.05, progress=None)
        figs = []
        for c in range(len(v)):
            img = v.image(c, min_side=224)
            logit = f"logit {float(v.scores[c]):.1f}" if v.scores is not None else ""
            figs.append(Report.figure(img, title=f"class {lm.class_names[c]}", caption=logit,
                                      bars=_bars(v, c, lm.class_names)))
        sec.rows.append(figs)
        sec.row_labels.append(f"{name} · class visualisations")


def _dataset_section(rep: Report, models: dict) -> None:
    """Maximally activating test digits per channel of the last layer (convscope.methods.dataset)."""
    from convscope.data.toydata import digits as _digits
    from convscope.data.toydata import planted_cue as _planted
    from convscope.methods.dataset import top_activations

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
    """Classes side by side on one colour scale, and "why a rather than b" (convscope.methods.grids)."""
    import io

    from PIL import Image

    from convscope.methods.grids import explain_classes, explain_methods

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

    from convscope.data.toydata import watermark_folder
    from convscope.methods.dataset import audit
    from convscope.methods.dataset._audit_report import add_audit_sections

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
    _marker_audit(rep, progress)


def _marker_audit(rep: Report, progress: bool) -> None:
    """The audit of digits-marker, whose shortcut (a corner marker) is on 90% of class 3: found by
    the class comparison and confirmed by intervention (before/after images in the suspects)."""
    import numpy as np

    from convscope.data.toydata import digits as _digits
    from convscope.data.toydata import shortcut_class
    from convscope.methods.dataset import TensorSource, audit
    from convscope.methods.dataset._audit_report import add_audit_sections
    from convscope.models import load_model

    lm = load_model("digits-marker")
    x, y = _digits().split("test")
    s = shortcut_class(x, y, kind="corner", cls=3, rate=0.9, per_class=40, seed=0)
    a = audit(lm, TensorSource(s.images, lm.preprocessing, s.labels, space="pixels"),
              progress=None if progress else False, embedding="pca")
    flagged = np.zeros(len(s.labels), bool)
    for _, k in a.suspects:
        flagged[k.flagged] = True
    truth = s.marked.numpy()
    hit = int((flagged & truth).sum())
    rep.section(
        "A shortcut on most of a class, proved by intervention",
        "digits-marker learned that a small ring in the top-left corner means '3', from training data "
        f"in which 90% of the 3s carry it. Held out: {int(truth.sum())} of the 40 images of class 3 "
        "carry the ring. Comparing a class's clusters with each other cannot see this (the ring is "
        "the class's majority); comparing the class with the other classes does, and the "
        "intervention proves it: the ring removed, the prediction goes; pasted into other digits, "
        f"it makes them '3'. {a.headline}.",
        table=[["digits-marker", str(len(a.suspects)), str(sum(k.confirmed for _, k in a.suspects)),
                f"{hit}/{int(flagged.sum())}", f"{hit}/{int(truth.sum())}"]],
        table_header=["model", "suspect clusters", "confirmed", "marked among flagged (precision)",
                      "marked found (recall)"],
    )
    add_audit_sections(rep, a, classes=["3"])


def _adversarial_section(rep: Report, models: dict) -> None:
    """Targeted PGD on the clean model (convscope.methods.synthesis)."""


    from convscope.data.toydata import digits as _digits
    from convscope.methods.synthesis.adversarial import pgd

    x, y = _digits().split("test")
    lm = models["digits-cnn"]
    target = [(int(v) + 3) % 10 for v in y[:4]]
    res = pgd(lm, x[:4], eps=0.2, steps=20, target=target, seed=0, progress=None, space="pixels")
    rep.add(
        res,
        title="Fooling the clean model: targeted PGD within an L-inf budget of 0.2",
        note="Projected gradient descent (Madry et al.) changes every pixel by at most 0.2 (in [0, 1] "
        "pixels) to make digits-cnn see the digit plus 3. Left: the input; middle: the "
        "perturbation, magnified; right: the adversarial image and what the model now predicts. "
        f"Success: {int(res.success.sum())}/{len(target)}.",
    )


def _big(img: torch.Tensor) -> Any:
    from convscope.core.results import upscale
    from convscope.models.preprocessing import display_array

    return upscale(display_array(img), 224)
