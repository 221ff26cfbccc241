"""Perturbation methods against their peers, side by side in one run, at equal work.

Every timing is reported as a ratio to its *bound*: the time of the bare batched forward passes
the method needs (N inputs of the same shape through the model at the same batch size, no mask
building, no fitting). A ratio near 1 means the method costs what its forward passes cost; a
ratio below 1 means it does less work than N full passes (incremental occlusion).

Peers (installed into the shared .venv with ``pip install lime captum grad-cam``):
Captum ``Occlusion``, ``Lime``, ``KernelShap``; the lime package's ``LimeImageExplainer`` (same
segments, same number of samples, its default batch size 10 and a large one); pytorch-grad-cam's
``ScoreCAM``.

The machine is shared and oversubscribed, so every library runs with the same torch thread
count (``--threads``, default 1: with more threads than free cores, torch's pool spends more
time waiting than computing) and each measurement is the median of ``--repeat`` runs.

The ``resnet18-engine`` block times the engine's speed options (``channels_last=True``,
``compile=True``) against eager NCHW full passes on plain occlusion, same windows, same batch
size. Every row here fixes its settings (full passes, every sample: ``incremental=False``,
``converge=None``); the methods at their defaults against their peers are in
``bench_perturbation_defaults.py``.

Usage: ``python benchmarks/bench_perturbation.py [--quick] [--repeat 1] [--threads 1]``; writes
``benchmarks/results/perturbation.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import convscope as cs
from convscope.methods.attribution.perturbation import segment

ROOT = Path(__file__).resolve().parent
ROWS: list[dict[str, Any]] = []


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bound(net: torch.nn.Module, x: torch.Tensor, n: int, batch: int, repeat: int) -> float:
    """Seconds for n bare forward passes at ``batch`` (measured on full batches, scaled)."""
    xb = x.expand(batch, *x.shape[1:]).clone()
    with torch.no_grad():
        net(xb)  # warm-up
        t, _ = timed(lambda: net(xb), max(repeat, 3))
    return t * n / batch


def row(model: str, method: str, impl: str, work: str, secs: float, bound_s: float, note: str = "") -> None:
    r = {"model": model, "method": method, "impl": impl, "work": work, "s": secs, "ratio": secs / bound_s,
         "note": note}
    ROWS.append(r)
    print(f"{model:10s} {method:12s} {impl:38s} {secs:8.2f}s  x{r['ratio']:.2f}  {note}", flush=True)


def occlusion_block(name: str, net: torch.nn.Module, x: torch.Tensor, window: int, stride: int,
                    batch: int, repeat: int, full: bool = True) -> None:
    from captum.attr import Occlusion

    H = x.shape[-1]
    n_side = (H - window) // stride + 1
    assert (H - window) % stride == 0, "choose window/stride that tile the image exactly (equal work)"
    n = n_side * n_side
    work = f"{n} windows {window}px/{stride}"
    b = bound(net, x, n, batch, repeat)
    row(name, "occlusion", "bound: bare forward passes", work, b, b)
    with torch.no_grad():
        t = int(net(x).argmax())
    c = x.shape[1]
    occ = Occlusion(net)
    tc, ref = timed(lambda: occ.attribute(x, sliding_window_shapes=(c, window, window),
                                          strides=(c, stride, stride), target=t, baselines=0.0,
                                          perturbations_per_eval=batch), repeat)
    row(name, "occlusion", "captum Occlusion", work, tc, b)
    kw = dict(method="occlusion", target=t, window=window, stride=stride, eval_batch_size=batch)
    if full:
        tf, e_full = timed(lambda: cs.explain(net, x, incremental=False, **kw), repeat)
        row(name, "occlusion", "convscope occlusion", work, tf, b, f"captum/convscope x{tc / tf:.2f}")
    te, e_exact = timed(lambda: cs.explain(net, x, incremental="exact", **kw), repeat)
    err_exact = float((e_exact.map - (e_full.map if full else e_exact.map)).abs().max())
    row(name, "occlusion", "convscope incremental exact", work, te, b,
        f"captum/convscope x{tc / te:.2f}" + (f"; max |exact - full| {err_exact:.1e}" if full else ""))
    for tau in (0.5,):
        ta, e_ap = timed(lambda tau=tau: cs.explain(net, x, incremental="approx", tau=tau, **kw), repeat)
        rel = float((e_ap.map - e_exact.map).norm() / e_exact.map.norm().clamp(min=1e-12))
        row(name, "occlusion", f"convscope incremental approx tau={tau}", work, ta, b,
            f"captum/convscope x{tc / ta:.2f}; rel. L2 error vs exact {rel:.3f}")


def engine_block(name: str, net: torch.nn.Module, x: torch.Tensor, window: int, stride: int,
                 batch: int, repeat: int) -> None:
    """The engine's speed options on plain occlusion: default vs channels_last vs torch.compile."""
    H = x.shape[-1]
    assert (H - window) % stride == 0, "choose window/stride that tile the image exactly"
    n = ((H - window) // stride + 1) ** 2
    work = f"{n} windows {window}px/{stride}"
    b = bound(net, x, n, batch, repeat)
    row(name, "occlusion", "bound: bare forward passes", work, b, b)
    with torch.no_grad():
        t = int(net(x).argmax())
    kw = dict(method="occlusion", target=t, window=window, stride=stride, eval_batch_size=batch,
              incremental=False)
    td, e_def = timed(lambda: cs.explain(net, x, channels_last=False, **kw), repeat)
    row(name, "occlusion", "convscope occlusion (full passes, eager NCHW)", work, td, b)

    def err(e: Any) -> str:
        return f"max abs diff to default {float((e.map - e_def.map).abs().max()):.1e}"

    tc, e_cl = timed(lambda: cs.explain(net, x, channels_last=True, **kw), repeat)
    row(name, "occlusion", "convscope occlusion channels_last=True", work, tc, b,
        f"default/this x{td / tc:.2f}; {err(e_cl)}")
    torch._dynamo.reset()  # cold: the first call pays tracing and compilation
    t0 = time.perf_counter()
    e_cp = cs.explain(net, x, compile=True, **kw)
    tcold = time.perf_counter() - t0
    row(name, "occlusion", "convscope occlusion compile=True, first call", work, tcold, b,
        f"default/this x{td / tcold:.2f}; includes compiling; {err(e_cp)}")
    tw, e_cp = timed(lambda: cs.explain(net, x, compile=True, **kw), repeat)
    row(name, "occlusion", "convscope occlusion compile=True, warm", work, tw, b,
        f"default/this x{td / tw:.2f}; {err(e_cp)}")
    cs.explain(net, x, compile=True, channels_last=True, **kw)  # compile this variant first
    tb, e_b = timed(lambda: cs.explain(net, x, compile=True, channels_last=True, **kw), repeat)
    row(name, "occlusion", "convscope occlusion compile + channels_last, warm", work, tb, b,
        f"default/this x{td / tb:.2f}; {err(e_b)}")


def sampling_block(name: str, net: torch.nn.Module, x: torch.Tensor, n: int, batch: int,
                   repeat: int, big_batch: int) -> None:
    from captum.attr import KernelShap, Lime
    from lime.lime_image import LimeImageExplainer

    seg = segment(x[0], "slic", n_segments=50)
    kind = "SLIC"
    if int(seg.max()) + 1 < 16:  # SLIC on a random-noise image: use a grid of 64 cells instead
        seg, kind = segment(x[0], "grid", cell=x.shape[-1] // 8), "grid"
    d = int(seg.max()) + 1
    work = f"{n} samples, {d} {kind} segments"
    b = bound(net, x, n, batch, repeat)
    row(name, "lime", "bound: bare forward passes", work, b, b)
    with torch.no_grad():
        t = int(net(x).argmax())
    opts = dict(target=t, segmentation=seg, n_samples=n, eval_batch_size=batch)
    tl, _ = timed(lambda: cs.explain(net, x, method="lime", converge=None, **opts), repeat)
    row(name, "lime", "convscope lime", work, tl, b)
    tcv, e_cv = timed(lambda: cs.explain(net, x, method="lime", **opts), repeat)  # its default stopping rule
    row(name, "lime", "convscope lime, default stopping rule", work, tcv, b,
        f"stopped at {e_cv.diagnostics['n_samples'][0]} samples, predicted seed-to-seed rank correlation "
        f"{e_cv.diagnostics['reliability'][0]:.3f}")

    seg_np = seg.cpu().numpy()
    img = x[0].permute(1, 2, 0).double().numpy()
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    c = x.shape[1]

    def classifier_fn(imgs: np.ndarray) -> np.ndarray:
        tt = torch.from_numpy(imgs).float().permute(0, 3, 1, 2)[:, :c].contiguous()
        with torch.no_grad():
            return torch.softmax(net(tt), 1).numpy()

    explainer = LimeImageExplainer(verbose=False)
    for bs in (10, big_batch):
        tp, _ = timed(lambda bs=bs: explainer.explain_instance(
            img, classifier_fn, labels=(t,), top_labels=None, num_samples=n, batch_size=bs,
            segmentation_fn=lambda _im: seg_np, random_seed=0), repeat)
        row(name, "lime", f"lime LimeImageExplainer batch {bs}", work, tp, b,
            f"lime/convscope x{tp / tl:.2f}")
    fm = seg[None, None].expand(1, c, *seg.shape)
    lime_c = Lime(net)
    tcl, _ = timed(lambda: lime_c.attribute(x, target=t, feature_mask=fm, n_samples=n,
                                            perturbations_per_eval=batch), repeat)
    row(name, "lime", "captum Lime", work, tcl, b, f"captum/convscope x{tcl / tl:.2f}")

    tk, _ = timed(lambda: cs.explain(net, x, method="kernel_shap", converge=None, **opts), repeat)
    row(name, "kernel_shap", "convscope kernel_shap", work, tk, b)
    ks = KernelShap(net)
    tck, _ = timed(lambda: ks.attribute(x, target=t, feature_mask=fm, n_samples=n,
                                        perturbations_per_eval=batch), repeat)
    row(name, "kernel_shap", "captum KernelShap", work, tck, b, f"captum/convscope x{tck / tk:.2f}")
    tr, _ = timed(lambda: cs.explain(net, x, method="rise", target=t, n_masks=n, eval_batch_size=batch,
                                     converge=None), repeat)
    row(name, "rise", "convscope rise", f"{n} masks", tr, b)
    trc, e_rc = timed(lambda: cs.explain(net, x, method="rise", target=t, n_masks=n, eval_batch_size=batch,
                                         converge=0.01, check_every=100), repeat)
    row(name, "rise", "convscope rise converge=0.01", f"{n} masks", trc, b,
        f"stopped at {e_rc.diagnostics['n_samples'][0]} masks, stability "
        f"{e_rc.diagnostics['stability'][0]:.3f}")


def scorecam_block(name: str, net: torch.nn.Module, x: torch.Tensor, layer: str, batch: int,
                   repeat: int) -> None:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(net.named_modules())[layer]
    with torch.no_grad():
        t = int(net(x).argmax())
        k = None

        def grab(_m: Any, _i: Any, o: torch.Tensor) -> None:
            nonlocal k
            k = o.shape[1]

        h = module.register_forward_hook(grab)  # benchmark-only probe of the channel count
        net(x)
        h.remove()
    assert k is not None
    work = f"{k} channels of {layer}"
    b = bound(net, x, k, batch, repeat)
    row(name, "scorecam", "bound: bare forward passes", work, b, b)
    ts, _ = timed(lambda: cs.explain(net, x, method="scorecam", layer=layer, target=t,
                                     eval_batch_size=batch), repeat)
    row(name, "scorecam", "convscope scorecam", work, ts, b)

    def peer() -> Any:
        with ScoreCAM(model=net, target_layers=[module]) as cam:
            cam.batch_size = batch
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(t)])

    tp, _ = timed(peer, repeat)
    row(name, "scorecam", "pytorch-grad-cam ScoreCAM", work, tp, b, f"grad-cam/convscope x{tp / ts:.2f}")
    ta, _ = timed(lambda: cs.explain(net, x, method="ablationcam", layer=layer, target=t,
                                     eval_batch_size=batch), repeat)
    row(name, "ablationcam", "convscope ablationcam (tail only)", work, ta, b)


def write_table(path: Path, title: str, script: str, args: argparse.Namespace, wall: float,
                preface: list[str], columns: list[str], cells: list[list[str]]) -> None:
    """Write a results table (the one writer of both perturbation benchmarks): title, how it was
    generated (machine, load, torch, threads, repeats, wall time), ``preface`` paragraphs, and
    a Markdown table of ``cells`` under ``columns``."""
    lines = [
        f"# {title}",
        "",
        f"Generated by `benchmarks/{script}` ({' '.join(sys.argv[1:]) or 'defaults'}) on "
        f"{platform.machine()} with {os.cpu_count()} cores shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, {args.threads} torch "
        f"thread(s) for every library, median of {args.repeat} run(s), total {wall:.0f} s.",
        "",
    ]
    for para in preface:
        lines += [para, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def write(path: Path, args: argparse.Namespace, wall: float) -> None:
    write_table(
        path, "Perturbation methods: convscope and peers, side by side", "bench_perturbation.py", args, wall,
        ["`ratio` = seconds / seconds of the bare batched forward passes the method needs (its "
         "bound; same inputs count, same batch size, eager NCHW). Below 1: the method does less "
         "work than that many full passes. Peer comparisons are in the note column. Random weights "
         "(`weights=None`) for the torchvision models: timing only."],
        ["model", "method", "implementation", "work", "seconds", "ratio to bound", "note"],
        [[r["model"], r["method"], r["impl"], r["work"], f"{r['s']:.2f}", f"{r['ratio']:.2f}", r["note"]]
         for r in ROWS])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="digits-cnn only")
    p.add_argument("--skip-vgg", action="store_true")
    p.add_argument("--blocks", default="all",
                   help="comma list of digits, resnet18-occlusion, resnet18-sampling, "
                   "resnet18-scorecam, resnet18-engine, vgg16 (default all)")
    p.add_argument("--out", default=str(ROOT / "results" / "perturbation.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()

    lm = cs.load_model("digits-cnn")
    from convscope.data.toydata import digits

    xd = lm.preprocessing.normalize(digits().split("test")[0][:1])
    net = lm.model.eval()
    blocks = set(args.blocks.split(",")) if args.blocks != "all" else {
        "digits", "resnet18-occlusion", "resnet18-sampling", "resnet18-scorecam", "resnet18-engine",
        "vgg16"}
    rd = max(args.repeat, 3)  # digits-cnn runs are short: take medians of 3 at least
    if "digits" in blocks:
        occlusion_block("digits-cnn", net, xd, 4, 2, 64, rd)
        sampling_block("digits-cnn", net, xd, 1000, 64, rd, 500)
        scorecam_block("digits-cnn", net, xd, "features.9", 64, rd)
    if not args.quick:
        import torchvision

        r18 = torchvision.models.resnet18(weights=None).eval()
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        if "resnet18-occlusion" in blocks:
            occlusion_block("resnet18", r18, x, 16, 16, 16, args.repeat)
        if "resnet18-sampling" in blocks:
            sampling_block("resnet18", r18, x, 200, 16, args.repeat, 100)
        if "resnet18-scorecam" in blocks:
            scorecam_block("resnet18", r18, x, "layer2", 16, args.repeat)
        if "resnet18-engine" in blocks:
            engine_block("resnet18", r18, x, 32, 16, 16, args.repeat)
        if "vgg16" in blocks and not args.skip_vgg:
            vgg = torchvision.models.vgg16(weights=None).eval()
            occlusion_block("vgg16", vgg, x, 32, 32, 16, args.repeat, full=False)
    write(Path(args.out), args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
