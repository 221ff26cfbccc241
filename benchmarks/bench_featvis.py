"""Feature visualisation speed, measured side by side in one run.

1. One optimisation step of :func:`convscope.engines.optimize.optimize` (FFT + decorrelated colour
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
from convscope.engines.optimize import optimize
from convscope.methods.featvis import objectives as O
from convscope.methods.featvis.param import FFTImage
from convscope.methods.featvis.transforms import standard_transforms

RESULTS = Path(__file__).parent / "results" / "featvis.md"


_STUBBED: list[str] = []


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
            _STUBBED.append("IPython")
    try:
        from lucent.optvis import param, render, transform

        return (render, param, transform), ""
    except Exception as exc:  # not installed, or incompatible kornia
        return None, f"{type(exc).__name__}: {exc}"


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

    st = s + 2 * 12 - 8 - 4  # the size the model sees after the standard transforms at scale 1
    xt = torch.rand(b, 3, st, st)

    def fwd_bwd_transformed() -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        xi = pre.normalize(xt).requires_grad_(True)
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
    n = args.steps

    def run_n(objective, k):
        p = FFTImage(s, b, 3, generator=torch.Generator().manual_seed(0))
        optimize(model, objective, p, steps=k, transforms=standard_transforms(s),
                 preprocess=pre.normalize, progress=False)

    lucent, why = _lucent()

    def ours() -> None:
        cs.visualize(lm, O.channel("layer3", 5), size=s, batch=b, steps=n, lr=0.05, param="fft",
                     transforms="standard", progress=False)

    def theirs() -> None:
        render, lparam, ltransform = lucent
        for p in model.parameters():  # as a Lucent user leaves them
            p.requires_grad_(True)
        try:
            render.render_vis(
                model, "layer3:5",
                param_f=lambda: lparam.image(s, batch=b, fft=True, decorrelate=True),
                optimizer=lambda ps: torch.optim.Adam(ps, lr=0.05),
                transforms=list(ltransform.standard_transforms), thresholds=(n,),
                progress=False, show_image=False)
        finally:
            # Lucent leaves a hook on every module; remove them so the next run starts equal.
            for m in model.modules():
                m._forward_hooks.clear()
            model.zero_grad(set_to_none=True)

    # Every candidate once per round, rounds repeated: load changes hit all candidates alike.
    cands = {
        "full": fwd_bwd_full,
        "full_t": fwd_bwd_transformed,
        "l3": fwd_bwd_layer3,
        "logit_n": lambda: run_n(logit, n),
        "logit_0": lambda: run_n(logit, 0),
        "chan_n": lambda: run_n(chan, n),
        "chan_0": lambda: run_n(chan, 0),
        "ours": ours,
    }
    if lucent is not None:
        cands["lucent"] = theirs
    times: dict[str, list[float]] = {k: [] for k in cands}
    for rnd in range(args.reps + 1):
        for k, f in list(cands.items()):
            t = time.perf_counter()
            try:
                f()
            except Exception as exc:  # Lucent incompatible with this torch/kornia
                if k != "lucent":
                    raise
                why = f"Lucent failed to run: {type(exc).__name__}: {exc}"
                del cands[k]
                continue
            if rnd:  # round 0 is the warm-up
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    t_full, t_l3 = med["full"], med["l3"]
    t_logit = (med["logit_n"] - med["logit_0"]) / n
    t_chan = (med["chan_n"] - med["chan_0"]) / n
    rows += [
        ("forward+backward, whole network (input grad, frozen weights)", t_full, "1.00 (reference)"),
        (f"forward+backward, whole network, at the transformed size {st}x{st}", med["full_t"],
         f"{med['full_t'] / t_full:.2f}"),
        ("forward+backward, stopped at layer3", t_l3, f"{t_l3 / t_full:.2f}"),
        (f"optimisation step, class logit ({n}-step run minus 0-step run, / {n})", t_logit,
         f"{t_logit / t_full:.2f}; {t_logit / med['full_t']:.2f} of the pass at {st} px"),
        (f"optimisation step, channel layer3:5 ({n}-step run minus 0-step run, / {n})", t_chan,
         f"{t_chan / t_full:.2f} of whole; {t_chan / t_l3:.2f} of the layer3 pass"),
    ]
    render_rows: list[tuple[str, float, str]] = []
    if "lucent" in med:
        a, c = med["ours"], med["lucent"]
        render_rows = [
            (f"convscope.visualize, layer3:5, {n} steps", a, f"{a / c:.2f} of Lucent ({c / a:.2f}x faster)"),
            (f"lucent render_vis, layer3:5, {n} steps", c, "1.00 (reference)"),
        ]
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
            "Transforms: the same list (pad 12 constant 0.5, jitter 8, scale 0.9-1.1, rotate -10..10, "
            "jitter 4); Lucent's jitter translates within the frame (kornia) while convscope's crops "
            "(as Lucid's does), so convscope's network input is about 236 px instead of 248 px "
            "(about 10% fewer pixels).",
            "Lucent 0.1.8 runs with kornia 0.4.1 (its pinned version, installed with --no-deps)"
            + (" and a stub IPython module (only used to display images in notebooks)."
               if _STUBBED else "."),
        ]
    else:
        lines += [f"Lucent could not be run here: {why}"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
