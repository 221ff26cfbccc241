"""CAM speed, measured side by side in one run.

1. Grad-CAM through the facade (``convscope.explain(..., method="gradcam")``) against one bare
   forward+backward pass of the same batch with respect to the input (weights frozen): the
   ``saliency`` bound. Grad-CAM's backward stops at the layer, so it may come in under 1.0x.
2. Grad-CAM against pytorch-grad-cam's ``GradCAM`` at equal input, layer and targets (its
   default use: the model's parameters keep ``requires_grad``, so its backward computes every
   weight gradient), and Eigen-CAM against its ``EigenCAM``.

Models: torchvision resnet18 with random weights (timings do not depend on the weights), 224 px,
batch 8, layer ``layer4``; and the bundled digits-cnn (32 px, batch 64, layer ``features.9``).
CPU. Minimum and median over interleaved repetitions; the ratios are what to read (the machine
is shared, and the minimum is the least disturbed run).

Usage: ``python benchmarks/bench_cam.py [--reps 9] [--reps-small 40]``.
Writes ``benchmarks/results/cam.md``.
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

import convscope as cs

RESULTS = Path(__file__).parent / "results" / "cam.md"


def bare_fwd_bwd(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    """One forward+backward w.r.t. the input, weights frozen (what saliency costs)."""

    def run() -> None:
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            xr = x.detach().requires_grad_(True)
            out = model(xr)
            torch.autograd.grad(out.gather(1, t[:, None]).sum(), xr)
        finally:
            for p, f in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(f)

    return run


def bare_fwd(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def median_times(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    for fn in fns.values():  # warm up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()} | {
        f"{k}#min": min(v) for k, v in times.items()
    }


def case(name: str, model: torch.nn.Module, layer: torch.nn.Module, layer_name: str, x: torch.Tensor,
         reps: int) -> tuple[str, dict[str, float]]:
    model.eval()
    with torch.no_grad():
        t = model(x).argmax(1)
    targets = t.tolist()
    # loaded once, as load_model() returns it; a plain nn.Module passed to explain() is probed
    # with extra forward passes for its class count and default layer on every call
    lm = cs.load_model(model, class_names=[str(i) for i in range(int(t.max()) + 1000)][:1000],
                       default_layer=layer_name)
    lm.class_names = lm.class_names[: int(model(x[:1]).shape[1])]
    fns: dict[str, Callable[[], None]] = {
        "forward (no grad)": bare_fwd(model, x),
        "forward+backward to the input": bare_fwd_bwd(model, x, t),
        "convscope gradcam": lambda: cs.explain(lm, x, method="gradcam", target=targets,
                                                batch_size=len(x)),
        "convscope eigencam": lambda: cs.explain(lm, x, method="eigencam", target=targets,
                                                 batch_size=len(x)),
        "convscope gradcam (plain nn.Module)": lambda: cs.explain(
            model, x, method="gradcam", layer=layer_name, target=targets, batch_size=len(x)),
    }
    try:
        from pytorch_grad_cam import EigenCAM, GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        tg = [ClassifierOutputTarget(i) for i in targets]

        def pgc_grad() -> None:
            with GradCAM(model=model, target_layers=[layer]) as c:
                c(input_tensor=x, targets=tg)

        def pgc_eigen() -> None:
            with EigenCAM(model=model, target_layers=[layer]) as c:
                c(input_tensor=x, targets=tg)

        fns["pytorch-grad-cam GradCAM"] = pgc_grad
        fns["pytorch-grad-cam EigenCAM"] = pgc_eigen
    except ImportError:
        pass
    return name, median_times(fns, reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="repetitions for resnet18")
    ap.add_argument("--reps-small", type=int, default=40, help="repetitions for digits-cnn")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import torchvision

    rn = torchvision.models.resnet18(weights=None)
    x_rn = torch.randn(8, 3, 224, 224)
    dg = cs.load_model("digits-cnn").model
    x_dg = torch.randn(64, 1, 32, 32)
    results = [
        case("resnet18, 224 px, batch 8, layer4", rn, rn.layer4, "layer4", x_rn, args.reps),
        case("digits-cnn, 32 px, batch 64, features.9", dg, dg.features[9], "features.9", x_dg,
             args.reps_small),
    ]
    try:
        import pytorch_grad_cam

        pgc = f"pytorch-grad-cam {getattr(pytorch_grad_cam, '__version__', '1.5.x')}"
    except ImportError:
        pgc = "pytorch-grad-cam not installed (pip install grad-cam)"
    lines = [
        "# CAM speed",
        "",
        f"`python benchmarks/bench_cam.py --reps {args.reps} --reps-small {args.reps_small}`; "
        f"torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, {pgc}. "
        "Interleaved repetitions on a shared machine whose load changes during the run: the "
        "minimum (least disturbed run) is the better estimate of the cost, the median is shown "
        "too; read the ratios.",
        "",
    ]
    for name, r in results:
        fb, fbm = r["forward+backward to the input"], r["forward+backward to the input#min"]
        lines += [f"## {name}", "",
                  "| run | min ms | / forward+backward (min) | median ms | / f+b (median) |",
                  "|---|---|---|---|---|"]
        for k, v in r.items():
            if k.endswith("#min"):
                continue
            mn = r[f"{k}#min"]
            lines.append(f"| {k} | {mn * 1e3:.1f} | {mn / fbm:.2f}x | {v * 1e3:.1f} | {v / fb:.2f}x |")
        lines.append("")
        if "pytorch-grad-cam GradCAM" in r:
            for ours, theirs in (("gradcam", "GradCAM"), ("eigencam", "EigenCAM")):
                a, b = f"convscope {ours}", f"pytorch-grad-cam {theirs}"
                lines.append(f"- {ours}: convscope / pytorch-grad-cam = {r[a + '#min'] / r[b + '#min']:.2f}x "
                             f"(min), {r[a] / r[b]:.2f}x (median)")
            lines.append("")
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
