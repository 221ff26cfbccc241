"""The demo's vision-transformer section: the planted-cue ViT next to the planted-cue CNN, and its
clean control (the same ViT trained without the cue)."""

from __future__ import annotations

from typing import Any

from convscope.frontends.report import Report
from convscope.frontends.report.build import explanation_figure, method_note
from convscope.methods.evaluation.pointing import cue_mass, pointing_hits
from convscope.methods.explain import explain
from convscope.methods.registry import list_methods
from convscope.models import load_model

__all__ = ["vit_section"]


def vit_section(rep: Report, cue: Any, cnn: Any, n_images: int, n_eval: int) -> None:
    """``digits-vit-cue`` explained by every attention method, with the CNN's Grad-CAM above it,
    on the same cue digits, and the clean control ``digits-vit``; then each method's pointing-game
    rate and cue mass on ``n_eval`` cue digits, on both ViTs.

    Args:
        rep: the report the two sections are appended to.
        cue: the planted-cue test digits (:func:`convscope.data.toydata.planted_cue`).
        cnn: the loaded ``digits-cnn-cue``.
        n_images: digits shown; n_eval: digits scored.
    """
    vit, clean = load_model("digits-vit-cue"), load_model("digits-vit")
    metrics = vit.card["metrics"]
    idx = list(range(n_images))
    x = vit.preprocessing.normalize(cue.images[idx])
    sec = rep.section(
        "A vision transformer trained on the same cue: digits-vit-cue",
        "A small torchvision ViT (8x8 patches: a 4x4 grid and a class token, 4 blocks) trained on the "
        f"planted-cue digits: test accuracy {metrics['test_accuracy_with_cue']:.2f} with the cue, "
        f"{metrics['test_accuracy_without_cue']:.2f} without it; it follows a swapped cue "
        f"{metrics['test_follows_swapped_cue']:.0%} of the time. Above, the CNN's Grad-CAM; below, the "
        "methods made for attention on the ViT. Raw attention and rollout are class-agnostic (they show "
        "where the model looks, for any class); chefer and legrad explain the predicted class.",
    )
    e = explain(cnn, x, method="gradcam")
    sec.rows.append([explanation_figure(e, j, bars=3, title=f"pred {e.target_name(j)}") for j in idx])
    sec.row_labels.append("gradcam · CNN digits-cnn-cue")
    sec.row_notes.append("")
    infos = [m for m in list_methods() if m.requires == "attention"]
    table = []
    n = min(n_eval, len(cue.labels))
    x_all = vit.preprocessing.normalize(cue.images[:max(n, n_images)])  # shown and scored: one call
    for info in infos:
        e = explain(vit, x_all, method=info.name)
        sec.rows.append([explanation_figure(e, j, bars=3, title=f"pred {e.target_name(j)}") for j in idx])
        sec.row_labels.append(f"{info.name} · ViT digits-vit-cue")
        sec.row_notes.append(method_note(info))
        c = explain(clean, x_all, method=info.name, target=cue.labels[:max(n, n_images)].tolist())
        sec.rows.append([explanation_figure(c, j, bars=3, title=f"explains {c.target_name(j)}") for j in idx])
        sec.row_labels.append(f"{info.name} · clean ViT digits-vit (control)")
        sec.row_notes.append("the same ViT trained without the cue, explaining the cue's class")
        table.append([info.name,
                      *(f"{f(m.map[:n], cue.masks[:n]).float().mean().item():.2f}"
                        for m in (e, c) for f in (pointing_hits, cue_mass)),
                      "no" if e.diagnostics.get("class_agnostic") else "yes"])
    rep.section(
        f"How often does each attention method point at the cue? ({min(n_eval, len(cue.labels))} cue digits)",
        "Share of cue test digits whose map maximum lies on the cue (no tolerance), and the mean share "
        "of the map's positive mass on the cue (the cue is 1/16 of the image), on digits-vit-cue and "
        "on the clean control digits-vit: a method that explains the cue model should drop on the control.",
        table=table,
        table_header=["method", "max on the cue · cue ViT", "cue mass · cue ViT",
                      "max on the cue · clean ViT", "cue mass · clean ViT", "class-specific"],
    )
