"""Dataset views and batch jobs: the local engine's images/s against the bare model, side by side.

For each model the same images at the same batch size go through:

* ``bare forward``: ``model(x)`` under ``no_grad`` on batches already in memory (the bound for
  ``top_activations``, which reads, preprocesses, runs and merges a running top-k per channel);
* ``bare saliency``: forward + backward to the input on batches in memory (the bound for
  ``run_batch(method="saliency")``, which reads, runs ``explain`` and writes fsynced Zarr chunks
  with done-markers).

Runs alternate and medians are reported (the machine is shared). Results go to
``benchmarks/results/dataset.md``.

    python benchmarks/bench_dataset.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import convscope as cs
from convscope.dataset import as_source, top_activations
from convscope.jobs import run_batch


def bare_forward(net, xs):
    with torch.no_grad():
        for x in xs:
            net(x)


def bare_saliency(net, xs):
    for p in net.parameters():
        p.requires_grad_(False)
    for x in xs:
        x = x.clone().requires_grad_(True)
        out = net(x)
        s = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(s, x)
        g.abs().amax(1)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def case(name, lm, data, layer, n, batch, repeats, workers, tmp):
    src = as_source(data, lm.preprocessing)
    xs = [torch.stack([src[i][0] for i in range(j, min(j + batch, n))]) for j in range(0, n, batch)]
    net = lm.model.eval()
    rows = {k: [] for k in ("bare forward", "top_activations", "bare saliency", "run_batch saliency")}
    for r in range(repeats):
        rows["bare forward"].append(n / timed(lambda: bare_forward(net, xs)))
        rows["top_activations"].append(
            n
            / timed(
                lambda: top_activations(lm, src, layer, k=8, batch_size=batch, num_workers=workers, limit=n)
            )
        )
        rows["bare saliency"].append(n / timed(lambda: bare_saliency(net, xs)))
        out = Path(tmp) / f"{name}-{r}.zarr"
        rows["run_batch saliency"].append(
            n
            / timed(
                lambda out=out: run_batch(
                    lm,
                    src,
                    "saliency",
                    out,
                    batch_size=batch,
                    chunk_size=batch * 4,
                    limit=n,
                    num_workers=workers,
                )
            )
        )
        shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--digits", type=int, default=1024)
    ap.add_argument("--resnet", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        lm = cs.load_model("digits-cnn")
        results.append(
            (
                "digits-cnn, digits (in memory), batch 64, layer features.9",
                args.digits,
                0,
                case("digits", lm, "digits", "features.9", args.digits, 64, args.repeats, 0, tmp),
            )
        )
        # resnet18 (random weights) on a folder of 224x224 RGB PNGs: real decoding and resizing
        folder = Path(tmp) / "imgs"
        d = cs.datasets.digits()
        for i in range(args.resnet):
            sub = folder / str(int(d.labels[i]))
            sub.mkdir(parents=True, exist_ok=True)
            a = (d.images[i, 0].numpy() * 255).astype(np.uint8)
            Image.fromarray(a).resize((256, 256), Image.BILINEAR).convert("RGB").save(sub / f"{i}.png")
        torch.manual_seed(0)
        rn = cs.load_model("torchvision:resnet18", weights=None)
        for workers in (0, 1):
            results.append(
                (
                    f"resnet18 (weights=None), PNG folder 224 px, batch 16, layer layer4, "
                    f"{workers} DataLoader worker(s)",
                    args.resnet,
                    workers,
                    case(
                        f"resnet{workers}",
                        rn,
                        str(folder),
                        "layer4",
                        args.resnet,
                        16,
                        args.repeats,
                        workers,
                        tmp,
                    ),
                )
            )
    lines = [
        "# Dataset views and batch jobs: engine vs bare model",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared, noisy), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians of {args.repeats} alternating runs.",
        "",
        "| case | images | bare forward img/s | top_activations img/s | ratio | bare saliency img/s "
        "| run_batch saliency img/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for title, n, _w, m in results:
        r1 = m["top_activations"] / m["bare forward"]
        r2 = m["run_batch saliency"] / m["bare saliency"]
        lines.append(
            f"| {title} | {n} | {m['bare forward']:.0f} | {m['top_activations']:.0f} | {r1:.0%} "
            f"| {m['bare saliency']:.0f} | {m['run_batch saliency']:.0f} | {r2:.0%} |"
        )
    lines += [
        "",
        "Engine timings include reading and preprocessing every image (from memory for the "
        "digits, decoding PNGs for resnet18), the receptive-field analysis, the running top-k merge, "
        "`explain()` per batch, and Zarr chunk writes with fsync and done-markers. The bare loops get "
        "their batches ready-made in memory.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "dataset.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
