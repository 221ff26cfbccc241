"""The concept test against Captum's TCAV: wall time and peak memory, side by side in one run.

``torchvision:resnet18`` with random weights (nothing to download) at 112 px, layers ``layer2``,
``layer3``, ``layer4``; 50 concept images, 10 random sets of 50 (plus the random counterpart set
the significance test needs, 11 in all) and 200 class images, all random pixels (the cost does not
depend on what the images show). Each variant runs in a fresh subprocess, so its peak resident
memory is its own:

* ``captum``: ``captum.concept.TCAV`` with its default classifier (SGD on the activations, which
  it writes to disk first), ``interpret`` on the 20 experimental sets the paper's test needs
  (concept vs each random set, counterpart vs each random set);
* ``convscope``: :func:`convscope.concept_test` with its default mean-difference vectors and both
  nulls (the paper's and the exchangeable one, which adds 90 vectors per layer);
* ``forwards``: 800 plain no-grad forward passes (every set image and class image once), the
  network's own cost, which neither can go below;
* ``convscope-2000``: the same with 2000 class images read from a folder, for memory against the
  number of images.

Runs alternate (the machine may be shared); medians are reported, and the ratio is Captum's wall
time over convscope's. Results are appended to ``benchmarks/results/concepts.md``, with the load
average before and after (the machine may be shared).

    python benchmarks/bench_concepts.py [--repeats 1] [--kinds captum convscope forwards convscope-2000]
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
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time, tempfile, warnings
warnings.simplefilter("ignore")
import torch
kind, folder = sys.argv[1], sys.argv[2]
import convscope as cs
lm = cs.load_model("torchvision:resnet18", weights=None, seed=0,
                   preprocessing={"preset": "imagenet", "size": 112, "resize": None})
g = torch.Generator().manual_seed(0)
concept = torch.randn(50, 3, 112, 112, generator=g) * 0.5 + 0.5
randoms = [torch.randn(50, 3, 112, 112, generator=g) for _ in range(11)]
cls = torch.randn(200, 3, 112, 112, generator=g)
layers = ["layer2", "layer3", "layer4"]
t = time.perf_counter()
if kind == "captum":
    from captum.concept import TCAV, Concept
    c = Concept(0, "concept", [concept])
    rs = [Concept(k + 1, f"random{k}", [r]) for k, r in enumerate(randoms)]
    with tempfile.TemporaryDirectory() as d:
        tcav = TCAV(lm.model, layers, save_path=d)
        sets = [[c, r] for r in rs[1:]] + [[rs[0], r] for r in rs[1:]]
        tcav.interpret(cls, sets, target=0)
elif kind == "forwards":
    with torch.no_grad():
        for x in [concept, *randoms, cls]:
            for i in range(0, len(x), 32):
                lm.model(x[i:i + 32])
else:
    images = cls if kind == "convscope" else folder
    cs.concept_test(lm, concept, 0, class_images=images, layers=layers, random_sets=torch.cat(randoms),
                    n_random=10, random_size=50)
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(root / f"{i}.png")


def run(kind: str, folder: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, folder], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", default=["captum", "convscope", "forwards", "convscope-2000"],
                    choices=["captum", "convscope", "forwards", "convscope-2000"],
                    help="variants to run (captum and convscope are needed for the ratio)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "concepts.md"))
    args = ap.parse_args()
    kinds = tuple(args.kinds)
    res: dict[str, list[dict]] = {k: [] for k in kinds}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if "convscope-2000" in kinds:
            make_folder(Path(tmp) / "cls", 2000)
        for _ in range(args.repeats):
            for k in kinds:
                res[k].append(run(k, str(Path(tmp) / "cls")))
                print(k, res[k][-1], flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "rss_mb")} for k, v in res.items()}
    ratio = med["captum"]["wall"] / med["convscope"]["wall"]
    import torch

    load_after = os.getloadavg()
    lines = [
        "",
        f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"`python benchmarks/bench_concepts.py --repeats {args.repeats}` on {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}: resnet18 (random weights) at 112 px, "
        "layers layer2, layer3, layer4; 50 concept images, 10 random sets of 50 + 1 counterpart, "
        "200 class images (medians of the runs, each variant in its own process). Load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores.",
        "",
        "| variant | wall (s) | peak RSS (MB) |",
        "|---|---|---|",
        *[f"| {k} | {med[k]['wall']:.1f} | {med[k]['rss_mb']:.0f} |" for k in kinds],
        "",
        f"**Captum / convscope wall time: {ratio:.1f}x.** `forwards` is the network's own floor: 800 plain "
        "no-grad forward passes (the 600 set images and the 200 class images once each), batch 32. "
        "`convscope-2000` is convscope with 2000 class images read from a folder: its peak memory "
        "against the 200-image run shows whether memory grows with the number of images.",
        "",
        "Captum / convscope per repeat (back to back): "
        + ", ".join(f"{c['wall'] / v['wall']:.1f}x"
                    for c, v in zip(res["captum"], res["convscope"], strict=True))
        + ".",
        "",
        "Raw runs: `" + json.dumps(res) + "`",
        "",
    ]
    with open(args.out, "a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
