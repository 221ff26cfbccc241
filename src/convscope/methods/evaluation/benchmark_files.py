"""The planted-cue benchmark's files: the leaderboard tables, the sanity table, the plots and the
HTML report that :func:`write_benchmark` writes for a
:class:`~convscope.methods.evaluation.benchmark.BenchmarkResult`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convscope.methods.evaluation.benchmark import (
    BenchmarkResult,
)

__all__ = ["write_benchmark"]


def write_benchmark(res: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Write leaderboard.csv/.json, sanity.csv, curves.png, sanity.png and report.html.

    Everything is rendered in memory first, then each file is written atomically.
    """
    from convscope.core.document import Report
    from convscope.methods.evaluation.tables import plot_curves, plot_sanity, png_image, table_bytes

    out = Path(out_dir)
    models = list(dict.fromkeys(r["model"] for r in res.rows))
    board = [r for m in models for r in res.leaderboard(m)]
    files: dict[str, bytes] = {
        "leaderboard.csv": table_bytes(board, "csv"),
        "leaderboard.json": table_bytes(board, "json"),
        "sanity.csv": table_bytes(res.sanity_rows(), "csv"),
    }
    panels = {}
    for m in models:
        for kind in ("deletion", "insertion"):
            panels[f"{m}: {kind}"] = {meth: c[kind] for (mm, meth), c in res.curves.items() if mm == m}
    files["curves.png"] = plot_curves(panels)
    san = {m: [s for (mm, _), s in res.sanity.items() if mm == m] for m in models}
    san = {m: v for m, v in san.items() if v}
    if san:
        files["sanity.png"] = plot_sanity(san, threshold=None)

    st = res.settings
    rep = Report(
        "convscope planted-cue benchmark",
        "Every registered attribution method, scored against a known cause. digits-cnn-cue reads "
        "a class-dependent 8x8 texture (the cue) planted in a corner of the image; digits-cnn, the "
        "same network trained on clean digits, reads the digit; both see the same test digits "
        "carrying their class's cue. digits-snow learned that a white band of snow along the bottom "
        "of a scene means 'wolf'; it sees test wolves on snow and, as the control, the same wolves "
        f"without it. {st['n_images']} images per row block. A method that shows what the model "
        "uses points at the cue for the cue models and away from it in the controls.",
    )
    header = ["method", "family", "max in cue", "max ±1 px", "cue mass", "deletion ↓",
              "insertion ↑", "sanity sim. ↓", "sanity"]
    cases = st.get("cases", {})
    shares = st.get("cue_share", {})
    for m in models:
        rows = res.leaderboard(m)
        share = f" (the cue is {100 * shares[m]:.1f}% of the image)" if m in shares else ""
        about = f"Images: {cases[m]}. " if m in cases else ""
        errors = [f"{r['method']}: {r['error']}" for r in rows if r.get("error")]
        rep.section(
            f"Leaderboard: {m}",
            about + "Pointing game (strict and within 1 px), share of positive attribution mass in "
            f"the cue{share}, areas under the most-relevant-first deletion and "
            f"insertion curves ({st['steps']} steps, blurred-image baseline, target probability), and "
            "the "
            f"cascading model-randomisation check on {st['n_sanity']} images: mean rank correlation "
            "with the trained model's map over the cascade, FAIL at or above "
            f"{st['sanity_threshold']}. Reference rows: the cue mask itself and a random map."
            + ("" if not errors else " Refused this model: " + "; ".join(errors)),
            table=[[r["method"], r["family"]] + [_fmt(r[c]) for c in (
                "max_in_cue", "max_within_1px", "cue_mass", "deletion", "insertion",
                "sanity_similarity", "sanity")] for r in rows],
            table_header=header,
        )
    sec = rep.section(
        "Deletion and insertion curves",
        "Mean target probability as the most relevant pixels are removed (deletion: a faithful "
        "map falls fast) or put back onto a blurred copy of the image (insertion: it rises "
        "fast). Dashed: the cue mask; dotted: a random map.")
    sec.rows.append([Report.figure(png_image(files["curves.png"]))])
    sec.row_labels.append("curves")
    if "sanity.png" in files:
        fails = sorted({meth for (_, meth), s in res.sanity.items() if not s.passed})
        sec = rep.section(
            "Sanity check: cascading model randomisation (Adebayo et al. 2018)",
            "Rank correlation between each method's map on the trained model and on copies whose "
            "layers are re-initialised from the output down. A map that stays the same while the "
            "model's weights are destroyed does not explain the model. Failing here: "
            + (", ".join(fails) if fails else "none") + ".")
        sec.rows.append([Report.figure(png_image(files["sanity.png"]))])
        sec.row_labels.append("cascading randomisation")
    files["report.html"] = rep.render().encode("utf-8")

    written = {}
    for name, data in files.items():
        written[name] = _write(out / name, data)
    return written


def _write(path: Path, data: bytes) -> Path:
    from convscope.core.io import atomic_write

    return atomic_write(path, lambda fh: fh.write(data))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
