"""Contrastive targets on the planted cue: does "why a rather than b" still point at a's cue?

On the bundled ``digits-cnn-cue`` model and test digits stamped with the cue of their class
(``convscope.data.toydata.planted_cue``), for every registered method:

* alone: the share of digits whose map maximum lies in the cue when explaining the predicted
  class ``a`` (the pointing game, strict);
* contrast: among the digits where the method finds the cue for ``a`` alone, the share whose
  contrast ``a``-vs-``b`` map (``b`` the runner-up, target ``"pred-vs-top2"``) has its positive
  maximum in ``a``'s cue.

Methods run with their registry fast options where they have them (as in the demo), on
``--n`` digits. Results go to ``benchmarks/results/contrast_cue.md``.

    python benchmarks/contrast_cue.py [--n 100]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import convscope as cs
from convscope.data.toydata import digits, planted_cue
from convscope.methods.evaluation.pointing import pointing_hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    lm = cs.load_model("digits-cnn-cue")
    x, y = digits().split("test")
    cue = planted_cue(x[: args.n], y[: args.n])
    xb = lm.preprocessing.normalize(cue.images)
    rows = []
    for info in cs.list_methods():
        opts = dict(info.fast_options)
        t = time.perf_counter()
        alone = cs.explain(lm, xb, method=info.name, **opts)
        both = cs.explain(lm, xb, method=info.name, target="pred-vs-top2", **opts)
        sec = time.perf_counter() - t
        hit_alone = pointing_hits(alone.map, cue.masks)
        hit_both = pointing_hits(both.map, cue.masks)  # argmax: the positive maximum
        n_found = int(hit_alone.sum())
        rate = float(hit_both[hit_alone].float().mean()) if n_found else float("nan")
        rows.append((info.name, info.signed, float(hit_alone.float().mean()), n_found, rate,
                     float(hit_both.float().mean()), opts, sec))
        print(rows[-1], flush=True)
    lines = [
        "# Contrastive targets on the planted cue (digits-cnn-cue)",
        "",
        f"{args.n} test digits with the cue of their class. 'alone': the map maximum lies in the cue "
        "when explaining the predicted class a. 'contrast | found': among those digits, the share "
        "whose a-vs-b map (b the runner-up, target `pred-vs-top2`) has its positive maximum in a's cue. "
        "'contrast, all': the same over every digit.",
        "",
        "| method | signed | alone | digits found alone | contrast given found | contrast, all | options |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, signed, alone_rate, n_found, rate, all_rate, opts, _ in rows:
        shown = ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
        lines.append(f"| {name} | {'yes' if signed else 'no'} | {alone_rate:.2f} | {n_found} "
                     f"| {rate:.2f} | {all_rate:.2f} | {shown} |")
    lines += [""]
    text = "\n".join(lines)
    print(text)
    (Path(__file__).parent / "results" / "contrast_cue.md").write_text(text)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
