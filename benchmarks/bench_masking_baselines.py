"""Which default baseline lets the masking methods find the planted cue (issue #27, item 5).

On ``digits-cnn-cue`` and on ``digits-cnn-cue-grey`` (the same model with class 0 also triggered by
mid-grey regions, :mod:`convscope.methods.evaluation._triggered`: the X-ray model of the issue, where RISE's
grey masks made the model say "pneumonia" whatever they hid), each masking method (occlusion,
RISE, LIME, Kernel SHAP) at its default settings explains the first ``--n-images`` test digits of
class 0 with their cue, as class 0, once per baseline (``grey``, ``black``, ``blur``, ``mean``,
``uniform`` and ``auto``: per image the candidate with the lowest target score). Reported: the
pointing game with 1 px tolerance (share of maps whose maximum lies in the cue) and how many maps
the result's own verdict calls unreliable (``diagnostics["reliable"]``). Usage:
``python benchmarks/bench_masking_baselines.py [--n-images 12] [--methods rise,occlusion]``; writes
``benchmarks/results/masking_baselines.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import convscope as cs
from convscope.data.toydata import digits, planted_cue
from convscope.methods.evaluation._triggered import GREY_CLASS, grey_triggered
from convscope.methods.evaluation.pointing import pointing_hits

BASELINES = ("grey", "black", "blur", "mean", "uniform", "auto")
METHODS = ("rise", "occlusion", "lime", "kernel_shap")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=12)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the verdict is counted below
    cue = cs.load_model("digits-cnn-cue")
    models = {"digits-cnn-cue": cue, "digits-cnn-cue-grey": grey_triggered(cue)}
    x, y = digits().split("test")
    idx = torch.nonzero(y == GREY_CLASS)[: args.n_images, 0]
    data = planted_cue(x[idx], y[idx])
    xm = cue.preprocessing.normalize(data.images)
    lines = ["# Masking baselines on the planted cue and on a grey-triggered model", "",
             f"`python benchmarks/bench_masking_baselines.py --n-images {args.n_images}`: the first "
             f"{len(idx)} test digits of class {GREY_CLASS} with their cue, explained as class "
             f"{GREY_CLASS}; each method at its defaults but the baseline (LIME / Kernel SHAP: `hide`). "
             "Cells: pointing game ±1 px (share of maps whose maximum is in the cue), then in brackets "
             "how many maps the result's own verdict calls unreliable; `auto` lists the baselines it "
             "chose. CPU, torch " + torch.__version__ + ".", "",
             "| method | baseline | digits-cnn-cue | digits-cnn-cue-grey | seconds |",
             "|---|---|---|---|---|"]
    for m in args.methods.split(","):
        key = "hide" if m in ("lime", "kernel_shap") else "baseline"
        for b in BASELINES:
            cells, t0 = [], time.perf_counter()
            for lm in models.values():
                e = cs.explain(lm, xm, method=m, target=GREY_CLASS, **{key: b})
                hit = pointing_hits(e.map, data.masks, 1).float().mean().item()
                bad = e.diagnostics["reliable"].count(False)
                chose = e.diagnostics.get("baseline_chosen")
                cells.append(f"{hit:.2f} ({bad} unreliable)" + (f" chose {'/'.join(sorted(set(chose)))}"
                                                                if chose else ""))
            lines.append(f"| {m} | {b} | {cells[0]} | {cells[1]} | {time.perf_counter() - t0:.0f} |")
            print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "masking_baselines.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
