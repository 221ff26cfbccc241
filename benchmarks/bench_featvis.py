"""Feature visualisation speed, measured side by side in one run.

1. One optimisation step of :func:`convscope.optimize.optimize` (FFT + decorrelated colour
   parameterisation, standard transforms, Adam) against one plain forward+backward pass of the
   same batch with respect to the input (weights frozen), for an objective at the output (class
   logit: the whole network must run) and one at ``layer3`` (the engine stops there).
2. A whole render (``convscope.visualize``) against Lucent's ``render_vis`` at equal steps,
   size, parameterisation (FFT, decorrelated), transforms (Lucent's standard transforms: pad 12,
   jitter 8, scale 0.9-1.1, rotate -10..10, jitter 4) and optimiser (Adam 0.05), for a channel of
   ``layer3``.

Model: torchvision resnet18 with random weights (timings do not depend on the weights), CPU,
224 px. Medians over interleaved repetitions; ratios are what to read (the machine is shared).

Usage: ``python benchmarks/bench_featvis.py [--reps 5] [--steps 16] [--batch 4]``
Writes ``benchmarks/results/featvis.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import convscope as cs
from convscope.featvis import objectives as O
from convscope.featvis.param import FFTImage
from convscope.featvis.transforms import standard_transforms
from convscope.optimize import optimize

RESULTS = Path(__file__).parent / "results" / "featvis.md"


def _lucent():
    """Lucent's render_vis, or (None, reason)."""
    if "IPython" not in sys.modules:
        try:
            import IPython  # noqa: F401
        except ImportError:  # Lucent imports IPython only to show images in notebooks
            ip = types.ModuleType("IPython")
            disp = types.ModuleType("IPython.display")
            ip.display = disp  # type: ignore[attr-defined]
            sys.modules["IPython"] = ip
            sys.modules["IPython.display"] = disp
    try:
        from lucent.optvis import param, render, transform

        return (render, param, transform), ""
    except Exception as exc:  # not installed, or incompatible kornia
        return None, f"{type(exc).__name__}: {exc}"


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = cs.load_model("torchvision:resnet18", weights=None)
    model = lm.model.eval()
    pre = lm.preprocessing
    b, s = args.batch, args.size
    rows: list[tuple[str, float, str]] = []

    # --- 1. one step vs one forward+backward ------------------------------------------------------
    x = torch.rand(b, 3, s, s)

    def fwd_bwd_full() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        xi = pre.normalize(x).requires_grad_(True)
        model(xi)[:, 1].sum().backward()
        for p in model.parameters():
            p.requires_grad_(True)

    def fwd_bwd_layer3() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        xi = pre.normalize(x).requires_grad_(True)
        h = model.maxpool(model.relu(model.bn1(model.conv1(xi))))
        h = model.layer3(model.layer2(model.layer1(h)))
        h[:, 5].mean().backward()
        for p in model.parameters():
            p.requires_grad_(True)

    def one_step(objective) -> None:
        p = FFTImage(s, b, 3, generator=torch.Generator().manual_seed(0))
        optimize(model, objective, p, steps=1, transforms=standard_transforms(s),
                 preprocess=pre.normalize, progress=False)

    def no_step(objective) -> None:  # the same call with zero steps: setup + final evaluation
        p = FFTImage(s, b, 3, generator=torch.Generator().manual_seed(0))
        optimize(model, objective, p, steps=0, transforms=standard_transforms(s),
                 preprocess=pre.normalize, progress=False)

    logit, chan = O.class_logit(1), O.channel("layer3", 5)
    # A step is the difference of a 1-step and a 0-step run (both include setup and the final
    # evaluation without transforms, which a long run pays once).
    t_full = timeit(fwd_bwd_full, args.reps)
    t_l3 = timeit(fwd_bwd_layer3, args.reps)
    t_step_logit = timeit(lambda: one_step(logit), args.reps) - timeit(lambda: no_step(logit), args.reps)
    t_step_chan = timeit(lambda: one_step(chan), args.reps) - timeit(lambda: no_step(chan), args.reps)

    # steady-state step: time a multi-step run and divide (less noisy)
    n = args.steps

    def run_n(objective, k):
        p = FFTImage(s, b, 3, generator=torch.Generator().manual_seed(0))
        optimize(model, objective, p, steps=k, transforms=standard_transforms(s),
                 preprocess=pre.normalize, progress=False)

    t_run_logit = (timeit(lambda: run_n(logit, n), max(1, args.reps // 2))
                   - timeit(lambda: run_n(logit, 0), args.reps)) / n
    t_run_chan = (timeit(lambda: run_n(chan, n), max(1, args.reps // 2))
                  - timeit(lambda: run_n(chan, 0), args.reps)) / n

    rows += [
        ("forward+backward, whole network (input grad, frozen weights)", t_full, "1.00 (reference)"),
        ("forward+backward, stopped at layer3", t_l3, f"{t_l3 / t_full:.2f}"),
        ("optimisation step, class logit (1-step minus 0-step run)", t_step_logit,
         f"{t_step_logit / t_full:.2f}"),
        (f"optimisation step, class logit (mean of a {n}-step run)", t_run_logit,
         f"{t_run_logit / t_full:.2f}"),
        ("optimisation step, channel layer3:5 (1-step minus 0-step run)", t_step_chan,
         f"{t_step_chan / t_full:.2f} of whole; {t_step_chan / t_l3:.2f} of layer3 pass"),
        (f"optimisation step, channel layer3:5 (mean of a {n}-step run)", t_run_chan,
         f"{t_run_chan / t_full:.2f} of whole; {t_run_chan / t_l3:.2f} of layer3 pass"),
    ]

    # --- 2. render vs Lucent ---------------------------------------------------------------------
    lucent, why = _lucent()
    render_rows: list[tuple[str, float, str]] = []
    if lucent is not None:
        render, lparam, ltransform = lucent

        def ours() -> None:
            cs.visualize(lm, O.channel("layer3", 5), size=s, batch=b, steps=n, lr=0.05, param="fft",
                         transforms="standard", progress=False)

        def theirs() -> None:
            for p in model.parameters():  # as a Lucent user leaves them
                p.requires_grad_(True)
            render.render_vis(
                model, "layer3:5",
                param_f=lambda: lparam.image(s, batch=b, fft=True, decorrelate=True),
                optimizer=lambda ps: torch.optim.Adam(ps, lr=0.05),
                transforms=list(ltransform.standard_transforms), thresholds=(n,),
                progress=False, show_image=False)
            # Lucent leaves a hook on every module; remove them so the next run starts equal.
            for m in model.modules():
                m._forward_hooks.clear()

        try:
            t_ours, t_theirs = [], []
            ours(), theirs()  # warm-up
            for _ in range(max(1, args.reps // 2)):
                t = time.perf_counter()
                ours()
                t_ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                theirs()
                t_theirs.append(time.perf_counter() - t)
            a, c = statistics.median(t_ours), statistics.median(t_theirs)
            render_rows = [
                (f"convscope.visualize, layer3:5, {n} steps", a, f"{a / c:.2f} of Lucent"),
                (f"lucent render_vis, layer3:5, {n} steps", c, "1.00 (reference)"),
            ]
        except Exception as exc:
            why = f"Lucent failed to run: {type(exc).__name__}: {exc}"
    # --- report -----------------------------------------------------------------------------------
    lines = [
        "# Feature visualisation: speed",
        "",
        f"`python benchmarks/bench_featvis.py --reps {args.reps} --steps {n} --batch {b} --size {s} "
        f"--threads {args.threads}`",
        "",
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads; resnet18 (random weights), batch {b}, {s}x{s}, CPU, "
        f"medians over interleaved repetitions. Load average at start: {os.getloadavg()[0]:.1f} "
        "(the machine is shared; read the ratios).",
        "",
        "## One optimisation step vs one forward+backward pass of the same batch",
        "",
        "| what | seconds | ratio |",
        "|---|---:|---|",
    ]
    lines += [f"| {w} | {t:.4f} | {r} |" for w, t, r in rows]
    lines += [
        "",
        "A step = parameterisation (irfft + colour) + standard transforms + normalisation + forward + "
        "backward to the spectrum + Adam. For an objective at `layer3` the engine stops the forward "
        "pass there (truncation) and computes no weight gradients.",
        "",
        "## A render vs Lucent's render_vis (equal steps, size, parameterisation, transforms, optimiser)",
        "",
    ]
    if render_rows:
        lines += ["| what | seconds | ratio |", "|---|---:|---|"]
        lines += [f"| {w} | {t:.3f} | {r} |" for w, t, r in render_rows]
        lines += [
            "",
            "Lucent runs the whole network, computes gradients for every weight and keeps a hook on "
            "every module (never removed); convscope stops after `layer3` with frozen weights.",
        ]
    else:
        lines += [f"Lucent could not be run here: {why}"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
