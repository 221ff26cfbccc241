"""The audit's self-contained HTML report, built on :class:`convscope.frontends.report.Report`.

Suspects first (one sentence each), then one section per class (classes with suspects first): the
eigengap plot, the embedding coloured by cluster, and per cluster its mean map with the box that
holds the attribution, and prototypes with their maps.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from convscope.core.document import Report, model_rows
from convscope.core.results import blend, colorize, normalize_map, upscale
from convscope.methods.dataset._grid import draw_box

if TYPE_CHECKING:
    from convscope.methods.dataset._audit import Audit, AuditClass, AuditCluster

__all__ = ["add_audit_sections", "audit_report", "intervention_images", "outlined"]

SUSPECT_COLOR = "#d62728"


def _png(fig: Any) -> Image.Image:
    from convscope.core.figure import figure_png

    return Image.open(io.BytesIO(figure_png(fig, bbox_inches=None))).convert("RGB")


def _cluster_colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def eigengap_plot(c: AuditClass) -> Image.Image:
    """The smallest eigenvalues of the class's Laplacian, the gaps, and the chosen k."""
    from convscope.core.figure import InlineFigure

    fig = InlineFigure(figsize=(4.2, 2.8), dpi=100)
    ax = fig.subplots()
    ev = np.asarray(c.eigenvalues)
    ax.plot(np.arange(1, len(ev) + 1), ev, "o-", color="#333", ms=4, label="eigenvalue")
    if len(ev) > 1:
        ax.bar(np.arange(1, len(ev)) + 0.5, np.diff(ev), width=0.5, color="#9ecae1", label="gap")
    ax.axvline(c.k + 0.5, color=SUSPECT_COLOR if any(k.suspect for k in c.clusters) else "#2b6cb0",
               ls="--", lw=1.2, label=f"k = {c.k} ({c.k_source})")
    ax.set_xlabel("index (clusters)")
    ax.set_ylabel("Laplacian eigenvalue")
    ax.set_title(f"class {c.name}: eigengap", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def embedding_plot(c: AuditClass, method: str) -> Image.Image:
    """The class's maps in 2-D, coloured by cluster; suspect clusters ringed in red."""
    from convscope.core.figure import InlineFigure

    fig = InlineFigure(figsize=(4.2, 3.6), dpi=100)
    ax = fig.subplots()
    colors = _cluster_colors(len(c.clusters))
    assert c.coords is not None
    for cl in c.clusters:
        sel = c.assignment == cl.id
        ax.scatter(c.coords[sel, 0], c.coords[sel, 1], s=22 if cl.suspect else 14, color=colors[cl.id],
                   edgecolors="#7f0000" if cl.suspect else "none", linewidths=0.7,
                   marker="D" if cl.suspect else "o",
                   label=f"{cl.id}: {cl.size}" + (" suspect" if cl.suspect else ""))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"class {c.name}: {method.upper()} of {c.n} maps", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="best", title="cluster: images", title_fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _box_rc(box: list[int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return y0, x0, y1, x1


def mean_map_image(cl: AuditCluster, signed: bool = False) -> Image.Image:
    """The cluster's mean attribution (colour map) with its mass box outlined."""
    h = normalize_map(cl.mean_map, signed=False, normalize="max")
    rgb = draw_box(colorize(h, signed=False), _box_rc(cl.box), color=(0.1, 0.9, 1.0))
    return upscale(rgb, 160)


def prototype_image(cl: AuditCluster, j: int) -> Image.Image:
    """Prototype ``j``: its map over the image, with the cluster's box."""
    h = normalize_map(cl.prototype_maps[j], signed=False, normalize="max")
    rgb = blend(cl.prototype_pixels[j], h, signed=False)
    return upscale(draw_box(rgb, _box_rc(cl.box), color=(0.1, 0.9, 1.0)), 120)


def audit_report(a: Audit) -> Report:
    """The report of an audit: suspects, then each class (classes with suspects first)."""
    n_img = sum(c.n for c in a.classes)
    rep = Report(
        f"convscope audit: {a.model_info.get('model')}",
        f"{n_img} images in {len(a.classes)} classes, each explained for its own label with "
        f"{a.method}" + (f" at layer {a.layer}" if a.layer else "") + ". Per class, the maps "
        "(positive part, scaled to sum 1, on a "
        f"{a.settings['size']}x{a.settings['size']} grid) are clustered spectrally; the number of "
        "clusters is where the largest eigengap lies. Each cluster's region (cyan box) is the "
        f"smallest box holding {a.settings['mass']:.0%} of what sets its mean map apart: where it "
        "exceeds the mean map of the class's other images. A cluster is suspect when the region is "
        "small (concentration), all its images use it (consistency) and the class's other images "
        "do not (exclusivity): suspicion = concentration x consistency x exclusivity "
        f">= {a.settings['threshold']}. A class with one cluster has nothing to set apart and is "
        "never suspect.",
    )
    add_audit_sections(rep, a)
    if a.notes:
        rep.section("Notes", " ".join(a.notes))
    rep.section("The model, as convscope used it",
                "What every map in this audit was computed with.",
                table=_model_table(a), table_header=["", "value"])
    return rep


def add_audit_sections(rep: Report, a: Audit, classes: list[str] | None = None) -> None:
    """Append the suspects table and one section per class (``classes``: only these names) to ``rep``."""
    sus = a.suspects
    if sus:
        n_conf = sum(k.confirmed for _, k in sus)
        sec = rep.section(
            f"Shortcuts confirmed by intervention: {n_conf}; unconfirmed suspects: {len(sus) - n_conf}",
            f"{a.headline}. Strategies that look like shortcuts, most suspicious first, flagged by "
            "comparing a cluster with its class's other clusters, the whole class with the other "
            "classes, or a region the class's images agree on (pasted into other classes' images). "
            "Each is tested by intervention: its region is removed from the suspect images "
            "and pasted into images of other classes. Confirmed: pasting the region alone makes the "
            "model say the class. Unconfirmed: it does not (often a part of the object itself).",
            table=[[c.name, str(k.id), " + ".join(k.flagged_by), f"{k.suspicion:.2f}" + (
                        f" (class {c.comparison.suspicion:.2f})" if "class" in k.flagged_by and c.comparison
                        else ""),
                    "confirmed" if k.confirmed else "not tested" if not k.evidence or
                    not k.intervention.applied else "unconfirmed",  # type: ignore[union-attr]
                    k.reading, k.evidence] for c, k in sus],
            table_header=["class", "cluster", "flagged by", "suspicion", "intervention", "reading",
                          "evidence"],
        )
        for c, k in sus:
            _intervention_row(sec, c.name, k)
    else:
        rep.section("Suspects: none", f"{a.headline}. No cluster concentrates on a small region that "
                    "the class's other clusters do not use, no class on a small region that the "
                    "other classes do not use, and no region a class's images agree on carries the "
                    "class when pasted into other classes' images.")
    shown = [c for c in a.classes if classes is None or c.name in classes]
    order = sorted(shown, key=lambda c: (not any(k.suspect for k in c.clusters), c.index))
    for c in order:
        _class_section(rep, a, c)


def intervention_images(k: AuditCluster) -> list[tuple[Image.Image, str, str]]:
    """(picture, title, caption) of each before/after example of ``k``'s intervention, the box
    outlined: a suspect image, the same with the region removed, an image of another class, the
    same with the region pasted in."""
    iv = k.intervention
    out: list[tuple[Image.Image, str, str]] = []
    if iv is None or not iv.applied:
        return out
    for e in iv.examples:
        pairs = [(e["before"], f"image {e['member']}", "suspect image"),
                 (e["removed"], "region removed", f"p({k.class_name}) = {e['p_removed']:.2f}"),
                 (e["donor_before"], f"image {e['donor']}", "another class"),
                 (e["pasted"], "region pasted", f"p({k.class_name}) = {e['p_pasted']:.2f}")]
        boxes = [iv.box, iv.removed_box, iv.box, iv.box]
        out += [(outlined(np.asarray(img, dtype=np.float64), b), t, cap)
                for (img, t, cap), b in zip(pairs, boxes, strict=True)]
    return out


def outlined(img: np.ndarray, box: list[int], side: int = 128) -> Image.Image:
    """``img`` enlarged (nearest neighbours) with ``box`` outlined just *outside* it, so that the
    outline hides none of the region's pixels."""
    k = max(1, int(np.ceil(side / min(img.shape[:2]))))
    big = np.repeat(np.repeat(img, k, 0), k, 1)
    h, w = big.shape[:2]
    lw = max(1, k // 2)
    x0, y0, x1, y1 = (v * k for v in box)
    t, le, b, r = max(0, y0 - lw), max(0, x0 - lw), min(h, y1 + lw), min(w, x1 + lw)
    return upscale(draw_box(big, (t, le, b, r), color=(1.0, 0.2, 0.2)), side)


def _intervention_row(sec: Any, name: str, k: AuditCluster) -> None:
    figs = [Report.figure(img, title=t, caption=cap) for img, t, cap in intervention_images(k)]
    if not figs:
        return
    for j in range(0, len(figs), 4):  # one example a row: suspect, removed, other class, pasted
        sec.rows.append(figs[j:j + 4])
        sec.row_labels.append(f"class {name}, cluster {k.id}: before / after" if j == 0 else "")
        sec.row_notes.append(k.evidence if j == 0 else "")


def _model_table(a: Audit) -> list[list[str]]:
    data = ", ".join(f"{k}: {v}" for k, v in a.data.items() if k in ("kind", "path", "split", "size"))
    return model_rows(a.model_info) + [
        ["method", a.method], ["layer", str(a.layer)],
        ["options", ", ".join(f"{k}={v}" for k, v in a.options.items()) or "defaults"],
        ["data", data], ["settings", ", ".join(f"{k}={v}" for k, v in a.settings.items())],
    ]


def _class_section(rep: Report, a: Audit, c: AuditClass) -> None:
    n_sus = sum(k.suspect for k in c.clusters)
    if not c.clusters:
        rep.section(f"Class {c.name}", c.note)
        return
    title = f"Class {c.name}: {c.n} images, {c.k} cluster{'s' if c.k != 1 else ''}" + (
        f", {n_sus} suspect" if n_sus else "")
    note = (f"k = {c.k} chosen by the eigengap (largest gap after {c.k} eigenvalues)."
            if c.k_source == "eigengap" else f"k = {c.k} as given.") + (f" {c.note}" if c.note else "")
    sec = rep.section(
        title, note,
        table=[[str(k.id) + (" (suspect)" if k.suspect else ""), str(k.size), f"{k.suspicion:.2f}",
                f"{k.concentration:.2f}", f"{k.consistency:.2f}", f"{k.exclusivity:.2f}",
                f"{k.mean_probability:.2f}", k.reading] for k in _clusters_in_order(c)],
        table_header=["cluster", "images", "suspicion", "concentration", "consistency", "exclusivity",
                      "p(class)", "reading"],
    )
    head = [Report.figure(eigengap_plot(c), title="eigengap", caption="Laplacian eigenvalues and gaps",
                          pixelated=False, width=340)]
    if c.coords is not None:
        from convscope.methods.dataset.embed import PCA_FALLBACK

        shown = "pca" if PCA_FALLBACK in (c.note or "") else a.settings["embedding"]  # what placed them
        head.append(Report.figure(embedding_plot(c, shown), title="embedding",
                                  caption="each dot an image's map, coloured by cluster", pixelated=False,
                                  width=340))
    sec.rows.append(head)
    sec.row_labels.append("")
    sec.row_notes.append("")
    for k in _clusters_in_order(c):
        figs = [Report.figure(mean_map_image(k), title=f"cluster {k.id}: mean map",
                              caption=f"{k.size} images, {k.mass_share:.0%} in the box",
                              colorbar="unsigned")]
        for j in range(len(k.prototypes)):
            cap = a_path(k, j)
            figs.append(Report.figure(prototype_image(k, j), title=f"prototype {j + 1}", caption=cap))
        sec.rows.append(figs)
        sec.row_labels.append(f"cluster {k.id}" + (" · suspect" if k.suspect else ""))
        sec.row_notes.append(k.reading)


def _clusters_in_order(c: AuditClass) -> list[AuditCluster]:
    return sorted(c.clusters, key=lambda k: (not k.suspect, -k.suspicion if k.suspect else k.id))


def a_path(k: AuditCluster, j: int) -> str:
    i = k.prototypes[j]
    if k.paths is not None:
        pos = int(np.flatnonzero(k.members == i)[0])
        return k.paths[pos]
    return f"image {i}"
