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
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import convscope as cs
from convscope.methods.dataset import as_source, top_activations
from convscope.methods.jobs import run_batch


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


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children, e.g. DataLoader workers)."""

    def cpu() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    t, c = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - t, cpu() - c


def case(name, lm, data, layer, n, batch, repeats, workers, tmp):
    src = as_source(data, lm.preprocessing)
    xs = [torch.stack([src[i][0] for i in range(j, min(j + batch, n))]) for j in range(0, n, batch)]
    net = lm.model.eval()
    runs = {
        "bare forward": lambda r: bare_forward(net, xs),
        "top_activations": lambda r: top_activations(
            lm, src, layer, k=8, batch_size=batch, num_workers=workers, limit=n
        ),
        "bare saliency": lambda r: bare_saliency(net, xs),
        "run_batch saliency": lambda r: run_batch(
            lm,
            src,
            "saliency",
            Path(tmp) / f"{name}-{r}.zarr",
            batch_size=batch,
            chunk_size=batch * 4,
            limit=n,
            num_workers=workers,
        ),
    }
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats + 1):  # alternate, so slow phases of the shared machine hit every variant
        for k, fn in runs.items():
            w, c = timed(lambda fn=fn, r=r: fn(r))
            if r > 0:  # the first round warms up (imports, allocator, first-call costs)
                wall[k].append(n / w)
                cpu[k].append(n / c)
        shutil.rmtree(Path(tmp) / f"{name}-{r}.zarr", ignore_errors=True)
    return (
        {k: statistics.median(v) for k, v in wall.items()},
        {k: statistics.median(v) for k, v in cpu.items()},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
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
                    f"resnet18 (weights=None), PNG folder 224 px, batch 16, layer4, {workers} worker(s)",
                    args.resnet,
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
        "# Dataset views and batch jobs: local engine vs bare model",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load varied a lot "
        f"during the run), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians of {args.repeats} "
        "alternating runs after a warm-up round. Images/s by wall clock, and by CPU time (this process plus "
        "its DataLoader workers), "
        "which the other jobs on the machine disturb less.",
        "",
        "| case | images | bare forward | top_activations | ratio (wall / CPU) | bare saliency "
        "| run_batch saliency | ratio (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for title, n, (w, c) in results:
        lines.append(
            f"| {title} | {n} | {w['bare forward']:.0f} | {w['top_activations']:.0f} "
            f"| {w['top_activations'] / w['bare forward']:.0%} / "
            f"{c['top_activations'] / c['bare forward']:.0%} "
            f"| {w['bare saliency']:.0f} | {w['run_batch saliency']:.0f} "
            f"| {w['run_batch saliency'] / w['bare saliency']:.0%} / "
            f"{c['run_batch saliency'] / c['bare saliency']:.0%} |"
        )
    lines += [
        "",
        "Throughputs in images/s (wall clock). Engine timings include reading and preprocessing every "
        "image (from memory for the digits, decoding PNGs for resnet18), the receptive-field analysis, "
        "the running top-k merge, `explain()` per batch (display images, softmax), and Zarr chunk writes "
        "with fsync and done-markers. The bare loops get their batches ready-made in memory.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "dataset.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
