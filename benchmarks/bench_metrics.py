"""The metric catalogue against Quantus 0.6.0, side by side in one run: time ratios (#33).

Seven metrics at matched settings, the same model, images, maps and explainer on both sides:
pixel flipping (64 steps), ROAD (5 percentages, noise 0.01), IROF (SLIC), faithfulness correlation
(50 subsets of 10 % of the pixels), max-sensitivity and local Lipschitz estimate (8 draws each,
re-explaining with one plain-autograd saliency function that both sides call), MPRT (cascading
from the top layer, the same explainer). Models: the bundled digits-cnn (32 px, 1 channel) and
torchvision resnet18 with random weights at 112 px (timings do not depend on the weights).

CPU, one thread for both sides (``torch.set_num_threads``), interleaved, minimum over ``--reps``
repetitions (the machine is shared: the minimum is the least disturbed run). The ratio is what
to read: Quantus seconds / convscope seconds.

Quantus 0.6.0 calls ``np.trapz``, which NumPy 2.4 removed; the benchmark aliases it to
``np.trapezoid`` (the same function) before running Quantus's IROF.

Usage: ``python benchmarks/bench_metrics.py [--n-digits 32] [--n-resnet 8] [--reps 1]``.
Appends a dated run (with the machine's load average) to ``benchmarks/results/metrics.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import convscope as cs
from convscope.methods.evaluation import faithfulness as fa
from convscope.methods.evaluation import faithfulness_sets as fs
from convscope.methods.evaluation import randomisation as ra
from convscope.methods.evaluation import robustness as ro

RESULTS = Path(__file__).parent / "results" / "metrics.md"


def saliency(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """|d logit_t / dx| summed over channels: the explainer both sides re-run."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).gather(1, t[:, None].long()).sum(), x)
    return g.abs().sum(1).detach()


def cases(n_digits: int, n_resnet: int) -> list[tuple[str, torch.nn.Module, object, torch.Tensor]]:
    import torchvision

    from convscope.data.toydata import digits

    d = cs.load_model("digits-cnn")
    x, _ = digits().split("test")
    xd = d.preprocessing.normalize(x[:n_digits])
    torch.manual_seed(0)
    r = torchvision.models.resnet18(num_classes=10).eval()
    lr = cs.load_model(r, preprocessing={"preset": "none", "size": 112, "channels": 3})
    # digits upsampled to 112 px, three channels, a little noise: images SLIC can segment
    up = torch.nn.functional.interpolate(x[:n_resnet], size=112, mode="bilinear", align_corners=False)
    xr = up.expand(-1, 3, -1, -1) + 0.05 * torch.rand(n_resnet, 3, 112, 112,
                                                      generator=torch.Generator().manual_seed(0))
    return [("digits-cnn 32 px", d.model, d, xd), ("resnet18 112 px", r, lr, xr)]


def pairs(net: torch.nn.Module, lm: object, x: torch.Tensor) -> dict[str, tuple[Callable[[], object],
                                                                             Callable[[], object]]]:
    import quantus

    if not hasattr(np, "trapz"):  # Quantus 0.6.0 predates NumPy 2.4's removal of the alias
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    with torch.no_grad():
        y = net(x).argmax(1)
    maps = saliency(net, x, y)
    a = maps[:, None].numpy()
    xn, yn = x.numpy(), y.numpy()
    n = x.shape[-2] * x.shape[-1]
    step = n // 64

    def q_explain(model, inputs, targets, **kw):
        return saliency(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets)).numpy()[:, None]

    def ex(lm_, xx, t):
        return saliency(net, xx, t)

    qkw = {"disable_warnings": True, "display_progressbar": False}
    call = {"model": net, "x_batch": xn, "y_batch": yn, "a_batch": a, "device": "cpu"}
    qex = {**call, "explain_func": q_explain}
    return {
        "pixel flipping": (
            # Quantus's features are channel-pixels: C times as many per step for the same 64 steps
            lambda: quantus.PixelFlipping(features_in_step=step * x.shape[1], **qkw)(**call),
            lambda: fa.pixel_flipping(lm, x, maps, features_in_step=step, baseline="min", targets=y)),
        "ROAD": (
            lambda: quantus.ROAD(percentages=[10, 30, 50, 70, 90], noise=0.01, **qkw)(**call),
            lambda: fs.road(lm, x, maps, percentages=[10, 30, 50, 70, 90], noise=0.01, targets=y)),
        "IROF": (
            lambda: quantus.IROF(return_aggregate=False, **qkw)(**call),
            lambda: fs.irof(lm, x, maps, targets=y)),
        "faithfulness correlation": (
            lambda: quantus.FaithfulnessCorrelation(nr_runs=50, subset_size=n // 10, **qkw)(**call),
            lambda: fa.faithfulness_correlation(lm, x, maps, n_samples=50, subset_size=n // 10, targets=y)),
        "max-sensitivity": (
            lambda: quantus.MaxSensitivity(nr_samples=8, lower_bound=0.1, **qkw)(**qex),
            lambda: ro.max_sensitivity(lm, x, ex, n_samples=8, radius=0.1, targets=y, maps=maps)),
        "local Lipschitz": (
            lambda: quantus.LocalLipschitzEstimate(nr_samples=8, perturb_std=0.1, **qkw)(**qex),
            lambda: ro.local_lipschitz_estimate(lm, x, ex, n_samples=8, std=0.1, targets=y, maps=maps)),
        "MPRT (cascading)": (
            lambda: quantus.MPRT(layer_order="top_down", **qkw)(**qex),
            lambda: ra.mprt(lm, x, ex, targets=y, maps=maps)),
    }


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-digits", type=int, default=32)
    ap.add_argument("--n-resnet", type=int, default=8)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", default=None, help="run only the metrics whose name contains this")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
        f"jobs; load average {load} at the start), one torch thread for both sides, minimum of "
        f"{args.reps} interleaved run(s). Ratio = Quantus seconds / convscope seconds (higher: "
        "convscope faster).", "",
    ]
    for name, net, lm, x in cases(args.n_digits, args.n_resnet):
        lines += [f"### {name}, {x.shape[0]} images", "", "| metric | Quantus s | convscope s | ratio |",
                  "| --- | ---: | ---: | ---: |"]
        for metric, (q, c) in pairs(net, lm, x).items():
            if args.only and args.only not in metric:
                continue
            tq, tc, failed = [], [], ""
            for _ in range(args.reps):
                try:
                    tq.append(timed(q))
                except Exception as exc:  # a Quantus bug on this input: say so, time convscope alone
                    failed = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                tc.append(timed(c))
            if failed:
                row = f"| {metric} | {failed} | {min(tc):.2f} | – |"
            else:
                row = f"| {metric} | {min(tq):.2f} | {min(tc):.2f} | {min(tq) / min(tc):.1f}x |"
            print(name, row, flush=True)
            lines.append(row)
        lines.append("")
    title = "# Metric catalogue vs Quantus 0.6.0 (benchmarks/bench_metrics.py)\n"
    old = RESULTS.read_text() if RESULTS.exists() else title
    RESULTS.write_text(old.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")  # appended: runs accumulate
    print(RESULTS)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
