"""The concept atlas's throughput and memory over growing data sets (issue #31, item 3).

Each run is a fresh process (so its peak resident memory is its own) that builds the atlas of one
layer over the first N images of a data set and reports:

* throughput: images per second of the whole job (LRP forward and backward passes, per-chunk Zarr
  writes with fsync, and the final fold to the top n per channel);
* peak RSS of the process, and its growth over the RSS just before the job starts (the model and
  the data source already loaded);
* the tracemalloc peak during the job (Python and NumPy allocations; torch's own allocator is not
  traced, RSS covers it);
* the store's size on disk (it holds (N, C) numbers per array, so it grows with N; memory should not).

Runs: torchvision resnet18 (random weights), ``layer3`` (256 channels), 64 px images from a lazy
synthetic data set (an image is made from its index when read, so the data set itself holds no
pixels), N = 500, 1000, 2000; and the bundled ``digits-cnn-cue`` at ``features.9`` over 500 and all
1,797 digits (the digits source holds its images in memory either way).

Usage: ``python benchmarks/bench_atlas.py [--threads 2]``; writes ``benchmarks/results/atlas.md``
(and appends a pointer to ``benchmarks/results/lrp.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "atlas.md"


class Synthetic(torch.utils.data.Dataset):
    """``n`` images of 3 x side x side made from their index (smooth blobs plus noise), label ``i % 10``."""

    def __init__(self, n: int, side: int = 64) -> None:
        self.n, self.side = n, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        low = torch.rand(1, 3, 8, 8, generator=g)
        img = torch.nn.functional.interpolate(low, size=(self.side, self.side), mode="bilinear")[0]
        return (img * 0.8 + 0.2 * torch.rand(3, self.side, self.side, generator=g)).clamp(0, 1), i % 10


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(which: str, n: int, threads: int) -> dict[str, float]:
    import convscope as cs

    torch.set_num_threads(threads)
    if which == "resnet18":
        import torchvision

        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        lm = cs.load_model(net, preprocessing=cs.Preprocessing(size=(64, 64), resize=None))
        data, layer, kw = Synthetic(n), "layer3", {"space": "pixels"}
    else:
        lm = cs.load_model("digits-cnn-cue")
        data, layer, kw = "digits", "features.9", {"limit": n}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "atlas.zarr"
        base = rss_mb()
        tracemalloc.start()
        t0 = time.perf_counter()
        atlas = cs.concept_atlas(lm, data, layer, n=8, out=out, batch_size=32, chunk_size=128, **kw)
        dt = time.perf_counter() - t0
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": atlas.n_images, "channels": atlas.channels, "seconds": dt,
            "images_per_s": atlas.n_images / dt,
            "rss_before_mb": base, "rss_peak_mb": peak, "rss_growth_mb": peak - base,
            "tracemalloc_peak_mb": py_peak / 2**20, "store_mb": disk / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "N"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads)))
        return
    runs = [("resnet18", 500), ("resnet18", 1000), ("resnet18", 2000), ("digits", 500), ("digits", 1797)]
    rows = []
    for which, n in runs:
        cmd = [sys.executable, __file__, "--worker", which, str(n), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append((which, r))
        print(which, r, flush=True)
    lines = [
        "# Concept atlas: throughput and memory against the number of images",
        "",
        f"`python benchmarks/bench_atlas.py --threads {args.threads}`; CPU, {args.threads} torch threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}. Each row is a fresh "
        "process; "
        "batch 32, chunk 128 (fsync per chunk), n = 8 patches per channel, composite epsilon_plus_flat, "
        "target pred.",
        "",
        "| model @ layer | images | channels | s | images/s | RSS before job (MB) | peak RSS (MB) | "
        "RSS growth (MB) | tracemalloc peak (MB) | store on disk (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for which, r in rows:
        name = "resnet18 (random, 64 px) @ layer3" if which == "resnet18" else "digits-cnn-cue @ features.9"
        lines.append(f"| {name} | {r['images']} | {r['channels']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.1f} | "
                     f"{r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} | {r['rss_growth_mb']:.0f} | "
                     f"{r['tracemalloc_peak_mb']:.2f} | {r['store_mb']:.2f} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
