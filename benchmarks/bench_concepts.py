"""The concept test against Captum's TCAV and against the lower bound of any implementation.

``torchvision:resnet18`` with random weights (nothing to download) at 112 px, layers ``layer2``,
``layer3``, ``layer4``; 50 concept images, 10 random sets of 50 (plus the random counterpart set
the paper's test needs, 11 in all, 550 distinct images) and 200 class images, all random pixels
(the cost does not depend on what the images show). Each variant runs in a fresh subprocess with
``torch.set_num_threads(--threads)`` (1 by default), so its CPU time and peak resident memory are
its own (the libraries each variant imports, Captum and SciPy, are imported before the clock
starts); the times are CPU times (``time.process_time``), which a shared machine's load disturbs
far less than wall time; wall time is printed beside them.

* ``captum``: ``captum.concept.TCAV`` with its default classifier (SGD on the activations, which
  it writes to disk first) on the 20 experimental sets the paper's test needs (concept vs each
  random set, counterpart vs each random set). Split: ``activations`` (its concept-activation
  passes), ``train`` (the classifiers), ``class`` (``interpret``: the class images' passes);
* ``convscope``: :func:`convscope.concept_test` with its default mean-difference vectors (both
  nulls: the paper's and the exchangeable one, which adds 90 vectors per layer), given Captum's
  11 disjoint random sets (its own seeded draws from the pooled 550 images overlap: 364 distinct
  images, which would spare it 186 passes Captum does). Split: ``sets`` (the set images'
  passes), ``class`` (the class images' directional derivatives), ``rest`` (vectors, tests);
* ``bound``: the lower bound of ANY implementation of the estimand, in plain torch: one forward
  pass of each of the 600 distinct concept and random images up to the deepest tested layer
  (``inference_mode``), and for the 200 class images one forward pass (no graph below the first
  tested layer) and one backward pass from the class logit down to the first tested layer, for
  the gradients at the three layers only (no weight gradients). Nothing else: no vectors, no
  test. Split: ``sets``, ``class``;
* ``convscope-cl``, ``bound-cl``: the same in ``torch.channels_last`` memory format (the bound is
  the lower of ``bound`` and ``bound-cl``);
* ``convscope-2000``: the concept test with 2000 class images read from a folder, for memory
  against the number of images.

Variants alternate within each repeat; medians over the repeats, and the ratios within each
repeat. ``captum / bound`` is the most any implementation could be faster than Captum here: below
10, a 10x speed-up over Captum is impossible on this machine. Results are appended to
``benchmarks/results/concepts.md``.

    python benchmarks/bench_concepts.py [--repeats 3] [--threads 1] [--kinds captum convscope bound]
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
kind, folder, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
import captum.concept, scipy.stats  # imported before the clock starts, for every variant alike
import convscope as cs
lm = cs.load_model("torchvision:resnet18", weights=None, seed=0,
                   preprocessing={"preset": "imagenet", "size": 112, "resize": None})
g = torch.Generator().manual_seed(0)
concept = torch.randn(50, 3, 112, 112, generator=g) * 0.5 + 0.5
randoms = [torch.randn(50, 3, 112, 112, generator=g) for _ in range(11)]
cls = torch.randn(200, 3, 112, 112, generator=g)
layers = ["layer2", "layer3", "layer4"]
parts = {}

def timed(name, f):
    def g(*a, **k):
        t0 = time.process_time()
        try:
            return f(*a, **k)
        finally:
            parts[name] = parts.get(name, 0.0) + time.process_time() - t0
    return g

net = lm.model
t, c = time.perf_counter(), time.process_time()
if kind == "captum":
    from captum.concept import TCAV, Concept
    cc = Concept(0, "concept", [concept])
    rs = [Concept(k + 1, f"random{k}", [r]) for k, r in enumerate(randoms)]
    with tempfile.TemporaryDirectory() as d:
        tcav = TCAV(net, layers, save_path=d)
        tcav.classifier.train_and_eval = timed("train", tcav.classifier.train_and_eval)
        sets = [[cc, r] for r in rs[1:]] + [[rs[0], r] for r in rs[1:]]
        timed("cavs", tcav.compute_cavs)(sets)
        timed("class", tcav.interpret)(cls, sets, target=0)
    parts["activations"] = parts.pop("cavs") - parts["train"]
elif kind.startswith("bound"):
    for p in net.parameters():
        p.requires_grad_(False)
    if kind == "bound-cl":
        net = net.to(memory_format=torch.channels_last)
        concept, cls, *randoms = [t.contiguous(memory_format=torch.channels_last)
                                  for t in (concept, cls, *randoms)]
    below = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    t0 = time.process_time()
    with torch.inference_mode():
        x = torch.cat([concept, *randoms])  # the 600 distinct set images, in full batches
        for i in range(0, len(x), 32):
            net.layer4(net.layer3(net.layer2(below(x[i:i + 32]))))
    parts["sets"] = time.process_time() - t0
    t0 = time.process_time()
    for i in range(0, len(cls), 32):
        with torch.no_grad():
            a2 = net.layer2(below(cls[i:i + 32]))
        a2.requires_grad_(True)
        a3 = net.layer3(a2)
        a4 = net.layer4(a3)
        out = net.fc(torch.flatten(net.avgpool(a4), 1))
        torch.autograd.grad(out[:, 0].sum(), [a2, a3, a4])
    parts["class"] = time.process_time() - t0
else:
    import convscope.methods.tcav.tcav as T
    from convscope.data.sources import Subset
    from convscope.methods.tcav._sets import ImageSet, digest

    def captums_sets(pool, n_sets, size, seed, about):  # the 11 disjoint sets Captum is given
        base = digest(pool)
        return [ImageSet(f"random {k}", Subset(pool, list(range(k * size, (k + 1) * size))),
                         f"{base}-{k}", about) for k in range(n_sets)]

    T.draw_random_sets = captums_sets
    T.set_statistics = timed("sets", T.set_statistics)
    T.directional_derivatives = timed("class", T.directional_derivatives)
    images = folder if kind == "convscope-2000" else cls
    cs.concept_test(lm, concept, 0, class_images=images, layers=layers, random_sets=torch.cat(randoms),
                    n_random=10, random_size=50, channels_last=kind == "convscope-cl")
cpu, wall = time.process_time() - c, time.perf_counter() - t
if kind.startswith("convscope"):
    parts["rest"] = cpu - parts["sets"] - parts["class"]
print(json.dumps({"cpu": cpu, "wall": wall, "parts": parts,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

KINDS = ["captum", "convscope", "bound", "convscope-cl", "bound-cl", "convscope-2000"]


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(root / f"{i}.png")


def run(kind: str, folder: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, folder, str(threads)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(res: dict[str, list[dict]], a: str, b: str) -> tuple[float, list[float]] | None:
    if a not in res or b not in res:
        return None
    per = [x["cpu"] / y["cpu"] for x, y in zip(res[a], res[b], strict=True)]
    return statistics.median(per), per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each variant's process (1)")
    ap.add_argument("--kinds", nargs="+", default=["captum", "convscope", "bound"], choices=KINDS,
                    help="variants to run (captum, convscope and bound are needed for the ratios)")
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
                res[k].append(run(k, str(Path(tmp) / "cls"), args.threads))
                print(k, json.dumps(res[k][-1]), flush=True)
    load_after = os.getloadavg()

    def med(k: str, f: str) -> float:
        return statistics.median(r[f] for r in res[k])

    def split(k: str) -> str:
        names = sorted({p for r in res[k] for p in r["parts"]})
        return ", ".join(f"{p} {statistics.median(r['parts'][p] for r in res[k]):.1f}" for p in names)

    import torch

    lines = [
        "",
        f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"`python benchmarks/bench_concepts.py --repeats {args.repeats} --threads {args.threads} --kinds "
        f"{' '.join(kinds)}` on {platform.machine()}, torch {torch.__version__}: resnet18 (random weights) "
        "at 112 px, layers layer2, layer3, layer4; 50 concept images, 10 random sets of 50 + 1 "
        "counterpart, 200 class images; each variant in its own process, medians of the repeats. Load "
        f"average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores.",
        "",
        "| variant | CPU (s) | wall (s) | peak RSS (MB) | CPU split (s, medians) |",
        "|---|---|---|---|---|",
        *[f"| {k} | {med(k, 'cpu'):.1f} | {med(k, 'wall'):.1f} | {med(k, 'rss_mb'):.0f} | {split(k)} |"
          for k in kinds],
        "",
    ]
    low = "bound"
    if "bound" in res and "bound-cl" in res:  # the bound: the faster memory format, repeat by repeat
        low = "bound (faster format)"
        res[low] = [min(x, y, key=lambda r: r["cpu"])
                    for x, y in zip(res["bound"], res["bound-cl"], strict=True)]
    for a, b, what in [("captum", low, "the most ANY implementation could gain over Captum here"),
                       ("captum", "convscope", "convscope's speed-up over Captum"),
                       ("convscope", low, "convscope's distance from the bound"),
                       ("convscope-cl", low, "convscope with channels_last, from the bound"),
                       ("convscope-cl", "convscope", "channels_last against the default"),
                       ("bound-cl", "bound", "channels_last against the default, for the bound")]:
        r = _ratio(res, a, b)
        if r is not None:
            lines.append(f"* **{a} / {b} CPU time: {r[0]:.2f}x** ({what}; per repeat: "
                         + ", ".join(f"{v:.2f}x" for v in r[1]) + ")")
    r = _ratio(res, "captum", low)
    if r is not None:
        lines += ["", (f"The 10x target is {'infeasible' if r[0] < 10 else 'feasible'} on this machine: "
                       f"Captum takes {r[0]:.1f}x the lower bound of any implementation.")]
    raw = {k: v for k, v in res.items() if k in kinds}
    lines += ["", "Raw runs: `" + json.dumps(raw) + "`", ""]
    with open(args.out, "a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
