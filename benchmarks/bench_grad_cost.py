"""What a gradient method costs against the work it needs (issue #29), side by side in one run.

1. Grad-CAM through the facade on torchvision resnet18 (random weights: timings do not depend on
   them), 224 px, layer ``layer4``, batch 1 and batch 8, against TorchCAM 0.5.0's ``GradCAM``
   (extractor made once, its documented use: ``cams = extractor(targets, model(x))``) and against
   one forward pass without gradients (the bound: the backward above ``layer4`` is a few small
   operations).
2. The CAM family (batch 8) against one forward pass. Score-CAM and Ablation-CAM are left out:
   they run the model on many perturbed inputs by design. Guided Grad-CAM is shown, but its
   guided-backprop half is a full backward pass to the input: read it against
   forward+input gradient.
3. Saliency (batch 8) against one forward pass plus the input gradient with frozen weights
   (``torch.autograd.grad`` w.r.t. the input: the bound) and against Captum's ``Saliency``
   (``abs=True``; the model's weights keep ``requires_grad``, Captum's documented use).
4. Per-call time of saliency on the bundled digits-cnn for one image against Captum's, where the
   work that is not the model (checks, copies, result building) dominates.

Every run of a table is interleaved with the others (one repetition of each in turn), and the
median over the repetitions is reported: the machine is shared with other jobs, so single timings
move; the ratios are what to read. CPU, ``--threads`` threads (default 2).

Usage: ``python benchmarks/bench_grad_cost.py [--reps 15] [--reps-small 200]``.
Writes ``benchmarks/results/grad_cost.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_cam import bare_fwd, bare_fwd_bwd  # this folder is on sys.path when run as a script

import convscope as cs

RESULTS = Path(__file__).parent / "results" / "grad_cost.md"
CAMS = ("gradcam", "cam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam", "guided_gradcam")


CLOCK = time.perf_counter


def medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each function over ``reps`` interleaved repetitions (after a warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = CLOCK()
            fn()
            times[k].append(CLOCK() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peers(model: torch.nn.Module, x: torch.Tensor, targets: list[int]) -> dict[str, Callable[[], object]]:
    """TorchCAM's Grad-CAM and Captum's saliency on the same inputs, where installed."""
    fns: dict[str, Callable[[], object]] = {}
    try:
        from torchcam.methods import GradCAM

        extractor = GradCAM(model, "layer4")  # its hooks stay on the model for the whole run

        def torchcam_gradcam() -> object:
            return extractor(targets, model(x))

        fns["TorchCAM GradCAM"] = torchcam_gradcam
    except ImportError:
        pass
    try:
        from captum.attr import Saliency

        sal = Saliency(model)
        t = torch.tensor(targets)
        fns["Captum Saliency"] = lambda: sal.attribute(x, target=t, abs=True)
    except ImportError:
        pass
    return fns


def resnet_tables(reps: int) -> list[str]:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    lm = cs.load_model(net, class_names=[f"class {i}" for i in range(1000)], default_layer="layer4")
    lines: list[str] = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            t = net(x).argmax(1)
        targets = t.tolist()
        fns: dict[str, Callable[[], object]] = {
            "forward (no grad)": bare_fwd(net, x),
            "forward + input gradient": bare_fwd_bwd(net, x, t),
        }
        names = CAMS if batch == 8 else ("gradcam",)
        for m in names:
            fns[f"convscope {m}"] = lambda m=m, x=x, t=targets, b=batch: cs.explain(
                lm, x, method=m, target=t, batch_size=b)
        if batch == 8:
            fns["convscope saliency"] = lambda x=x, t=targets: cs.explain(lm, x, method="saliency", target=t)
        peer = peers(net, x, targets)
        if batch == 1:
            peer.pop("Captum Saliency", None)
        fns.update(peer)
        r = medians(fns, reps)
        fwd, fig = r["forward (no grad)"], r["forward + input gradient"]
        lines += [f"## resnet18, 224 px, batch {batch}", "",
                  "| run | median ms | / forward | / forward + input gradient |", "|---|---|---|---|"]
        lines += [f"| {k} | {v * 1e3:.1f} | {v / fwd:.2f}x | {v / fig:.2f}x |" for k, v in r.items()]
        lines.append("")
        if "TorchCAM GradCAM" in r:
            lines.append(f"- gradcam, batch {batch}: convscope / TorchCAM = "
                         f"{r['convscope gradcam'] / r['TorchCAM GradCAM']:.2f}x")
        if "Captum Saliency" in r:
            lines.append(f"- saliency, batch {batch}: convscope / Captum = "
                         f"{r['convscope saliency'] / r['Captum Saliency']:.2f}x")
        lines.append("")
    return lines


def digits_table(reps: int) -> list[str]:
    lm = cs.load_model("digits-cnn")
    net = lm.model
    x = lm.preprocessing.normalize(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        t = net(x).argmax(1)
    fns: dict[str, Callable[[], object]] = {
        "forward (no grad)": bare_fwd(net, x),
        "forward + input gradient": bare_fwd_bwd(net, x, t),
        "convscope saliency": lambda: cs.explain(lm, x, method="saliency", target=t.tolist()),
    }
    try:
        from captum.attr import Saliency

        sal = Saliency(net)
        fns["Captum Saliency"] = lambda: sal.attribute(x, target=t, abs=True)
    except ImportError:
        pass
    r = medians(fns, reps)
    lines = ["## digits-cnn, 32 px, one image: per-call time", "",
             "| run | median ms | / forward + input gradient |", "|---|---|---|"]
    fig = r["forward + input gradient"]
    lines += [f"| {k} | {v * 1e3:.2f} | {v / fig:.2f}x |" for k, v in r.items()]
    if "Captum Saliency" in r:
        lines += ["", f"- saliency per call: convscope / Captum = "
                  f"{r['convscope saliency'] / r['Captum Saliency']:.2f}x"]
    return lines + [""]


def _version(mod: str) -> str:
    try:
        return f"{mod} {__import__(mod).__version__}"
    except ImportError:
        return f"{mod} not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15, help="repetitions for resnet18")
    ap.add_argument("--reps-small", type=int, default=200, help="repetitions for digits-cnn")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time, the CPU time of this "
                    "process (all its threads), less moved by other jobs on a shared machine")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    dev = "CPU"
    lines = [
        "# Gradient cost: each method against the work it needs (issue #29)",
        "",
        f"`python benchmarks/bench_grad_cost.py --reps {args.reps} --reps-small {args.reps_small} "
        f"--threads {args.threads} --clock {args.clock}`; "
        f"torch {torch.__version__}, {dev}, {args.threads} threads, {args.clock}-clock time, "
        f"{platform.processor() or platform.machine()}, {_version('torchcam')}, {_version('captum')}. "
        "Medians over interleaved repetitions on a shared, noisy machine (other jobs run beside "
        "this one): read the ratios, not the milliseconds.",
        "",
    ]
    lines += resnet_tables(args.reps)
    lines += digits_table(args.reps_small)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
