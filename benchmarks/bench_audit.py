"""The dataset audit against the batch job alone: images/s and peak memory, side by side in one run.

``torchvision:resnet18`` with random weights (``--weights none``: nothing to download) over a folder
of ``--images`` 224 px RGB PNGs in 5 class folders. Each variant runs in a fresh subprocess (so its
peak resident memory is its own) with a fresh store:

* ``run_batch``: :func:`convscope.methods.jobs.run_batch` with Grad-CAM for each image's label, the work
  the audit starts with (reading, preprocessing, explaining, writing fsynced Zarr chunks);
* ``audit``: :func:`convscope.audit` with the same method, chunking and batch size: the batch job
  plus the streamed downsizing, the per-class spectral clustering, t-SNE, the cluster descriptions
  and the second streamed pass for the mean maps and prototypes.

Runs alternate (the machine may be shared); medians are reported. The ratio is the audit's
images/s over the batch job's (target >= 80%). Results go to ``benchmarks/results/audit.md``.

    python benchmarks/bench_audit.py [--images 500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time, shutil
import torch
torch.set_num_threads(int(sys.argv[4]))
import convscope as cs
from convscope.methods.jobs import run_batch
kind, folder, out = sys.argv[1:4]
lm = cs.load_model("torchvision:resnet18", weights=None, seed=0)
kw = dict(batch_size=16, chunk_size=64)
t = time.perf_counter()
if kind == "run_batch":
    run_batch(lm, folder, "gradcam", out, target="label", **kw)
else:
    cs.audit(lm, folder, method="gradcam", store=out, progress=False, **kw)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "rss_mb": rss}))
"""


def make_folder(root: Path, n: int) -> None:
    """``n`` 224 px RGB PNGs in 5 class folders: crops of scikit-learn's sample photos, recoloured."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    for i in range(n):
        p = photos[i % len(photos)]
        y0, x0 = rng.integers(0, p.shape[0] - 240), rng.integers(0, p.shape[1] - 240)
        crop = p[y0:y0 + 240, x0:x0 + 240].astype(np.float32) * rng.uniform(0.6, 1.2, 3)
        d = root / f"class{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((224, 224)).save(d / f"{i:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_folder(folder, args.images)
        script = Path(tmp) / "child.py"
        script.write_text(CHILD)
        res: dict[str, list[dict[str, float]]] = {"run_batch": [], "audit": []}
        load0 = os.getloadavg()[0]
        for r in range(args.repeats):
            for kind in res:
                out = Path(tmp) / f"{kind}-{r}.zarr"
                cmd = [sys.executable, str(script), kind, str(folder), str(out), str(args.threads)]
                p = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res[kind].append(json.loads(p.stdout.strip().splitlines()[-1]))
                print(kind, res[kind][-1], flush=True)
    ips = {k: statistics.median(args.images / v["wall"] for v in runs) for k, runs in res.items()}
    rss = {k: max(v["rss_mb"] for v in runs) for k, runs in res.items()}
    lines = [
        "# Dataset audit vs the batch job alone",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (load average {load0:.1f} at the start), "
        f"{args.threads} torch threads. resnet18 (random weights), {args.images} PNGs of 224 px in 5 "
        f"class folders, Grad-CAM at layer4 for each image's label, batch 16, chunks of 64. Each run is a "
        f"fresh process with a fresh store; medians of {args.repeats} alternating runs.",
        "",
        "| variant | images/s | peak RSS (MB) |",
        "|---|---|---|",
        f"| run_batch (the maps alone) | {ips['run_batch']:.1f} | {rss['run_batch']:.0f} |",
        f"| audit (maps + clustering + t-SNE + report data) | {ips['audit']:.1f} | {rss['audit']:.0f} |",
        "",
        f"**Audit / batch job: {ips['audit'] / ips['run_batch']:.0%}** of the batch job's images/s "
        "(target >= 80%); peak memory "
        f"{rss['audit'] - rss['run_batch']:+.0f} MB beside it (the downsized 32x32 copies, 4 KB per image, "
        "and one chunk of full maps at a time).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (Path(__file__).parent / "results" / "audit.md").write_text(text)


if __name__ == "__main__":
    main()
