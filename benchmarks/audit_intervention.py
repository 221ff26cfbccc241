"""The audit with interventions at 500, 1,000 and 2,000 images: does its time grow linearly?

The bundled ``digits-marker`` model (a corner marker on 90% of its training 3s) over held-out
digits in which 90% of class 3 carries the marker (:func:`convscope.data.toydata.shortcut_class`),
drawn with replacement from the whole digits set and shifted by -1..1 px so that 2,000 images are
not 2,000 copies of 1,797. Each size runs in a fresh process (Grad-CAM, embedding none, default
intervention: two forward passes per image of each suspect cluster). Reported: wall time, time per
image, the share of the time spent in the interventions, their forward passes, the suspects and
the precision/recall of the flagged images against the marker's ground truth. A linear audit has
a flat time per image. Results go to ``benchmarks/results/audit_intervention.md``.

    python benchmarks/audit_intervention.py [--sizes 500 1000 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
import convscope as cs
from convscope.methods.dataset import TensorSource
from convscope.methods.dataset import _intervene
from convscope.data.toydata import digits, stamp_shortcut

n = int(sys.argv[1])
rng = np.random.default_rng(0)
d = digits()
per_class = n // 10
marked_n = int(round(0.9 * per_class))
lab = d.labels.numpy()
idx = np.concatenate([rng.choice(np.flatnonzero(lab == k), per_class - (marked_n if k == 3 else 0))
                      for k in range(10)] + [rng.choice(len(lab), marked_n)])
x = d.images[torch.from_numpy(idx)].clone()
shift = rng.integers(-1, 2, (len(idx), 2))
for i, (dy, dx) in enumerate(shift):
    x[i] = torch.roll(x[i], (int(dy), int(dx)), (1, 2))
marked = np.zeros(len(idx), bool)
marked[-marked_n:] = True
x[torch.from_numpy(marked)] = stamp_shortcut(x[torch.from_numpy(marked)], "corner")
y = d.labels[torch.from_numpy(idx)].clone()
y[torch.from_numpy(marked)] = 3
lm = cs.load_model("digits-marker")
spent = [0.0, 0]
orig = _intervene.intervene
def timed(model, src, members, *a, **k):
    t = time.perf_counter()
    try:
        return orig(model, src, members, *a, **k)
    finally:
        spent[0] += time.perf_counter() - t
        spent[1] += 2 * len(members)
_intervene.intervene = timed
t = time.perf_counter()
a = cs.audit(lm, TensorSource(x, lm.preprocessing, y, space="pixels"), progress=False, embedding="none",
             batch_size=64, chunk_size=256)
wall = time.perf_counter() - t
flag = np.zeros(len(idx), bool)
for _, k in a.suspects:
    flag[k.flagged] = True
p = float((flag & marked).sum() / max(1, flag.sum()))
r = float((flag & marked).sum() / marked.sum())
print(json.dumps({"n": len(idx), "wall": wall, "intervention_s": spent[0], "intervention_images": spent[1],
                  "suspects": len(a.suspects), "confirmed": sum(k.confirmed for _, k in a.suspects),
                  "precision": p, "recall": r, "headline": a.headline}))
"""


def main() -> None:
    """Run each size in a fresh process and write the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit_intervention.md")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for n in args.sizes:
        got = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.threads)], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(got.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = rows[0]["wall"] / rows[0]["n"]
    lines = [
        "# The audit with interventions: time against the number of images", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (load average {load:.1f} at the start, "
        f"shared), {args.threads} torch thread(s). `digits-marker`, Grad-CAM, embedding none, batch 64, "
        "chunks of 256; class 3 carries the corner marker on 90% of its images. One fresh process per size.",
        "",
        "| images | wall (s) | ms / image | vs 500 | interventions (s) | edited images | suspects "
        "(confirmed) | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = r["wall"] / r["n"]
        lines.append(f"| {r['n']} | {r['wall']:.1f} | {1000 * per:.1f} | {per / base:.2f}x | "
                     f"{r['intervention_s']:.1f} | {r['intervention_images']} | {r['suspects']} "
                     f"({r['confirmed']}) | {r['precision']:.2f} | {r['recall']:.2f} |")
    lines += ["", f"Headline at {rows[-1]['n']} images: {rows[-1]['headline']}", "",
              "Time per image within a factor of the first row means linear growth; the interventions "
              "are two forward passes per image of a suspect cluster (the edited-images column)."]
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
