"""Gradient-attribution speed and memory, measured side by side in one run.

1. ``saliency`` through the facade (``convscope.explain(..., method="saliency")``) against one bare
   forward+backward pass of the same batch with respect to the input (weights frozen): torchvision
   resnet18 (random weights; timings do not depend on them), 224 px, batch 8; and the bundled
   digits-cnn, 32 px, batch 64.
2. ``integrated_gradients`` against Captum's ``IntegratedGradients`` at equal steps (Gauss-Legendre
   for both, zero baseline): resnet18, ``--ig-side`` px (default 224), ``--ig-images`` images
   (default 2), 32 steps. Ours with
   ``internal_batch_size=16``; Captum at its default (every step in one batch) and with
   ``internal_batch_size=16``; and the bound: the same 64 rows through bare forward+backward passes
   in chunks of 16.
3. Peak memory of each IG variant at several step counts (``--mem-steps``, ``--mem-side``): each
   measured in a fresh subprocess as peak RSS (``ru_maxrss``) minus the RSS just before the call
   (after a one-row warm-up that absorbs one-time allocations), so one run cannot hide in
   another's freed-but-cached memory.

CPU, 2 threads. Medians over interleaved repetitions; the ratios are what to read (the machine is
shared and noisy).

Usage: ``python benchmarks/bench_gradients.py [--reps 7] [--reps-ig 3]``. Writes
``benchmarks/results/gradients.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import convscope as cs

RESULTS = Path(__file__).parent / "results" / "gradients.md"
SIDE, IG_CHUNK = 224, 16
IG_SIDE, IG_IMAGES, MEM_SIDE = 224, 2, 224  # set from --ig-side / --ig-images / --mem-side


def frozen(model: torch.nn.Module) -> list[bool]:
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def restore(model: torch.nn.Module, flags: list[bool]) -> None:
    for p, f in zip(model.parameters(), flags, strict=True):
        p.requires_grad_(f)


def bare_fwd_bwd(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                 chunk: int | None = None) -> Callable[[], None]:
    """Forward+backward w.r.t. the input, weights frozen, in chunks of ``chunk`` rows."""

    def run() -> None:
        flags = frozen(model)
        try:
            step = chunk or x.shape[0]
            for i in range(0, x.shape[0], step):
                xr = x[i : i + step].detach().requires_grad_(True)
                out = model(xr)
                torch.autograd.grad(out.gather(1, t[i : i + step, None]).sum(), xr)
        finally:
            restore(model, flags)

    return run


def ig_ours(model: cs.LoadedModel, x: torch.Tensor, t: list[int], steps: int) -> Callable[[], None]:
    def run() -> None:
        cs.explain(model, x, method="integrated_gradients", target=t, steps=steps,
                   internal_batch_size=IG_CHUNK)

    return run


def ig_captum(model: torch.nn.Module, x: torch.Tensor, t: list[int], steps: int,
              chunk: int | None) -> Callable[[], None]:
    from captum.attr import IntegratedGradients

    def run() -> None:
        model.eval()
        IntegratedGradients(model).attribute(x, target=t, n_steps=steps,
                                             method="gausslegendre", internal_batch_size=chunk)

    return run


def timed(funcs: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    for f in funcs.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in funcs}
    for _ in range(reps):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def resnet18() -> cs.LoadedModel:
    """Loaded once: explain() on a LoadedModel does not re-probe a plain module on every call."""
    torch.manual_seed(0)
    lm = cs.load_model("torchvision:resnet18", weights=None)
    lm.model.eval()
    return lm


def ig_inputs() -> tuple[torch.Tensor, list[int]]:
    x = torch.randn(IG_IMAGES, 3, IG_SIDE, IG_SIDE, generator=torch.Generator().manual_seed(0))
    return x, [(7 * i + 1) % 1000 for i in range(IG_IMAGES)]


def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def memory_child(variant: str, steps: int) -> None:
    """Run one IG variant once in this fresh process and print its peak memory (MiB) as JSON."""
    torch.set_num_threads(2)
    lm = resnet18()
    model = lm.model
    x, t = ig_inputs()
    run = {
        "convscope": lambda: ig_ours(lm, x, t, steps),
        "captum_default": lambda: ig_captum(model, x, t, steps, None),
        "captum_chunk16": lambda: ig_captum(model, x, t, steps, IG_CHUNK),
        "bare": lambda: bare_fwd_bwd(model, x.repeat_interleave(steps, 0),
                                     torch.tensor(t).repeat_interleave(steps), IG_CHUNK),
    }[variant]()
    warm = x[:1].detach().requires_grad_(True)  # one-time allocations (thread pools, kernels)
    torch.autograd.grad(model(warm)[0, 0], warm)
    before = _rss_kb()
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (peak - before) / 1024}))


def memory(variant: str, steps: int) -> float:
    r = subprocess.run([sys.executable, __file__, "--memory-child", variant, str(steps),
                        "--ig-side", str(MEM_SIDE), "--ig-images", str(IG_IMAGES)],
                       capture_output=True, text=True, check=True)
    return float(json.loads(r.stdout.strip().splitlines()[-1])["mib"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--reps-ig", type=int, default=3)
    ap.add_argument("--ig-side", type=int, default=224, help="IG input side (px)")
    ap.add_argument("--ig-images", type=int, default=2, help="IG batch of images")
    ap.add_argument("--mem-side", type=int, default=224, help="input side for the memory table")
    ap.add_argument("--mem-steps", default="16,32,64", help="step counts for the memory table")
    ap.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "STEPS"))
    args = ap.parse_args()
    global IG_SIDE, IG_IMAGES, MEM_SIDE
    IG_SIDE, IG_IMAGES, MEM_SIDE = args.ig_side, args.ig_images, args.mem_side
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    torch.set_num_threads(2)
    lines = [
        "# Gradient attributions: speed and memory",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s) (shared), torch {torch.__version__}, "
        "2 threads. Written by `python benchmarks/bench_gradients.py` "
        f"(--reps {args.reps} --reps-ig {args.reps_ig} --ig-side {IG_SIDE} --ig-images {IG_IMAGES} "
        f"--mem-side {MEM_SIDE} --mem-steps {args.mem_steps}); medians of interleaved runs. Read the "
        "ratios; absolute times move with the machine's load.",
        "",
        "## Saliency against one bare forward+backward pass",
        "",
        "| model | batch | bare fwd+bwd (ms) | saliency via explain() (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    cases = [
        ("resnet18 (random), 224 px", resnet18(), torch.randn(8, 3, SIDE, SIDE), 8),
        ("digits-cnn, 32 px", cs.load_model("digits-cnn"), torch.randn(64, 1, 32, 32), 64),
    ]
    for name, lm, x, b in cases:
        t = torch.arange(b) % 10
        res = timed({"bare": bare_fwd_bwd(lm.model, x, t),
                     "saliency": lambda m=lm, x=x, t=t, b=b: cs.explain(
                         m, x, method="saliency", target=t.tolist(), batch_size=b)},
                    args.reps)
        lines.append(f"| {name} | {b} | {res['bare'] * 1e3:.1f} | {res['saliency'] * 1e3:.1f} | "
                     f"{res['saliency'] / res['bare']:.2f}x |")
        print(lines[-1], flush=True)

    steps = 32
    lm = resnet18()
    model = lm.model
    x, t = ig_inputs()
    rows = x.repeat_interleave(steps, 0)
    rt = torch.tensor(t).repeat_interleave(steps)
    res = timed({
        "bare": bare_fwd_bwd(model, rows, rt, IG_CHUNK),
        "convscope": ig_ours(lm, x, t, steps),
        "captum_default": ig_captum(model, x, t, steps, None),
        "captum_chunk16": ig_captum(model, x, t, steps, IG_CHUNK),
    }, args.reps_ig)
    lines += [
        "",
        f"## Integrated gradients against Captum, {steps} steps (resnet18 random, {IG_SIDE} px, "
        f"{IG_IMAGES} images = {IG_IMAGES * steps} path points)",
        "",
        "| run | time (s) | vs bare fwd+bwd of the steps | vs convscope |",
        "|---|---|---|---|",
    ]
    labels = {
        "bare": f"bare fwd+bwd of the {IG_IMAGES * steps} rows, chunks of {IG_CHUNK}",
        "convscope": f"convscope integrated_gradients, internal_batch_size={IG_CHUNK}",
        "captum_default": "Captum IntegratedGradients, default (all steps in one batch)",
        "captum_chunk16": f"Captum IntegratedGradients, internal_batch_size={IG_CHUNK}",
    }
    for k, v in res.items():
        lines.append(f"| {labels[k]} | {v:.2f} | {v / res['bare']:.2f}x | "
                     f"{v / res['convscope']:.2f}x |")
        print(lines[-1], flush=True)

    mem_steps = [int(v) for v in args.mem_steps.split(",")]
    lines += [
        "",
        f"## Peak memory of integrated gradients, {MEM_SIDE} px, {IG_IMAGES} image(s) (MiB above "
        "the RSS before the call, after a one-row warm-up; a fresh process each)",
        "",
        "| run | " + " | ".join(f"{s} steps" for s in mem_steps) + " |",
        "|---" * (len(mem_steps) + 1) + "|",
    ]
    labels["bare"] = f"bare fwd+bwd of the steps' rows, chunks of {IG_CHUNK}"
    for k in ["convscope", "captum_chunk16", "captum_default", "bare"]:
        mem = [memory(k, s) for s in mem_steps]
        lines.append(f"| {labels[k]} | " + " | ".join(f"{m:.0f}" for m in mem) + " |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "convscope's integrated gradients sum each chunk's weighted gradients into a float64 "
        "accumulator as the chunk finishes, so its peak is set by `internal_batch_size` and "
        "follows the chunked bare passes as the step count grows; Captum by default stacks "
        "every step into one batch and "
        "its peak grows with the step count. The extra work over the bare passes is one no-grad "
        "forward of the images and one of the baselines (targets and the completeness gap).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
