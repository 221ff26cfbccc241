"""Perturbation methods at their DEFAULT settings against their peers, side by side in one run.

Issue #19 ("fast by default"): what a user gets without touching an option.

* **occlusion** at defaults (window an eighth of the side, stride half of it, grey baseline;
  incremental exact inference where the model traces, ``eval_batch_size="auto"``,
  ``channels_last="auto"``) against Captum's ``Occlusion`` at the same windows, strides and
  baseline (``perturbations_per_eval`` = 16): resnet18 at 224 px and vgg16 at 112 px (random
  weights: timing only), and the bundled trained digits model, where the two maps are compared
  (max abs difference relative to the map's max).
* **lime** at defaults (it stops once its weights are stable; ``n_samples=1000`` is the maximum)
  against the lime package's ``LimeImageExplainer`` (same segments, same grey hiding, same
  kernel; its default batch of 10): at equal samples (the lime package gets as many samples as
  convscope used), and at equal stability: stability is the Spearman rank correlation of the
  segment weights of two runs with different seeds; the lime package runs at 250, 500, 1000,
  2000 and 4000 samples and the smallest count whose stability reaches convscope's is timed.
* **kernel_shap** at defaults against Captum's ``KernelShap`` at equal samples (the count
  convscope used; ``perturbations_per_eval`` = convscope's batch size).

The machine is shared: every library gets the same torch thread count, each timing is the median
of ``--repeat`` runs, and all ratios come from one run. Usage:
``python benchmarks/bench_perturbation_defaults.py [--repeat 1] [--threads 1] [--quick]``; writes
``benchmarks/results/perturbation_defaults.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

import convscope as cs
from convscope.attribution.segments import segment
from convscope.inputs import baseline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_perturbation import timed  # noqa: E402  (the one timing helper)

ROOT = Path(__file__).resolve().parent
ROWS: list[dict[str, Any]] = []
PEER_BATCH = 16


def row(model: str, method: str, what: str, ours: float, peer: float, note: str = "") -> None:
    r = {"model": model, "method": method, "what": what, "ours": ours, "peer": peer,
         "ratio": peer / ours, "note": note}
    ROWS.append(r)
    print(f"{model:10s} {method:11s} {what:58s} ours {ours:7.2f}s peer {peer:7.2f}s "
          f"x{r['ratio']:.2f}  {note}", flush=True)


def engine_note(e: Any) -> str:
    eng = e.diagnostics["engine"]
    return (f"engine: incremental={eng['incremental']}, channels_last={eng['channels_last']}, "
            f"batch {eng['batch_size']}")


def occlusion_default(name: str, lm: Any, x: torch.Tensor, repeat: int,
                      check: bool = False) -> None:
    from captum.attr import Occlusion

    net, pre = lm.model, lm.preprocessing
    with torch.no_grad():
        t = int(net(x).argmax())
    ts, e = timed(lambda: cs.explain(lm, x, method="occlusion", target=t), repeat)
    win = e.diagnostics["window"][0]
    st = e.diagnostics["stride"]
    c = x.shape[1]
    base = baseline(x[0], "grey", pre)
    base = base.expand_as(x[0])[None].contiguous()
    occ = Occlusion(net)
    tc, ref = timed(lambda: occ.attribute(x, sliding_window_shapes=(c, win, win), strides=(c, st, st),
                                          target=t, baselines=base, perturbations_per_eval=PEER_BATCH),
                    repeat)
    scale = float(ref[0, 0].abs().max())
    err = float((e.map[0] - ref[0, 0]).abs().max()) / max(scale, 1e-12)
    note = (f"{e.diagnostics['windows']} windows {win}px/{st}; {engine_note(e)}; "
            f"max |diff| / max|map| {err:.1e}")
    row(name, "occlusion", "convscope defaults vs captum Occlusion (equal windows)", ts, tc, note)
    if check:
        assert err < 1e-4, f"occlusion differs from Captum's by {err:.1e} (relative)"


def stability(weights_a: list[float], weights_b: list[float]) -> float:
    return float(spearmanr(weights_a, weights_b)[0])


def lime_default(name: str, lm: Any, x: torch.Tensor, repeat: int) -> None:
    from lime.lime_image import LimeImageExplainer

    net, pre = lm.model, lm.preprocessing
    with torch.no_grad():
        t = int(net(x).argmax())
    seg = segment(x[0], "slic", n_segments=50)
    if int(seg.max()) + 1 < 16:  # SLIC on a random-noise image: a grid of 64 cells instead
        seg = segment(x[0], "grid", cell=x.shape[-1] // 8)
    d = int(seg.max()) + 1
    opts = dict(method="lime", target=t, segmentation=seg)
    ts, e0 = timed(lambda: cs.explain(lm, x, seed=0, **opts), repeat)
    e1 = cs.explain(lm, x, seed=1, **opts)
    n_used = e0.diagnostics["n_samples"][0]
    ours_stab = stability(e0.diagnostics["segment_weights"][0], e1.diagnostics["segment_weights"][0])

    seg_np = seg.cpu().numpy()
    img = x[0].permute(1, 2, 0).double().numpy()
    c = x.shape[1]
    grey = baseline(x[0], "grey", pre)
    grey = grey[:, 0, 0].double().numpy()  # per channel (the grey image is uniform)
    if c == 1:
        img, grey = np.repeat(img, 3, axis=2), np.repeat(grey, 3)

    def classifier_fn(imgs: np.ndarray) -> np.ndarray:
        tt = torch.from_numpy(imgs).float().permute(0, 3, 1, 2)[:, :c].contiguous()
        with torch.no_grad():
            return torch.softmax(net(tt), 1).numpy()

    explainer = LimeImageExplainer(verbose=False)

    def peer(n: int, seed: int) -> list[float]:
        exp = explainer.explain_instance(img, classifier_fn, labels=(t,), top_labels=None, num_samples=n,
                                         hide_color=grey, segmentation_fn=lambda _im: seg_np,
                                         random_seed=seed)
        w = dict(exp.local_exp[t])
        return [w.get(i, 0.0) for i in range(d)]

    tp, _ = timed(lambda: peer(n_used, 0), repeat)
    row(name, "lime", f"equal samples ({n_used} of 1000, {d} segments)", ts, tp,
        f"{engine_note(e0)}; seed-to-seed rank correlation {ours_stab:.3f}")
    ladder = []
    for n in (250, 500, 1000, 2000, 4000):
        tn, wa = timed(lambda n=n: peer(n, 0), 1)
        s = stability(wa, peer(n, 1))
        ladder.append(f"{n}: {s:.3f}")
        if s >= ours_stab:
            row(name, "lime", f"equal stability (lime package needs {n} samples)", ts, tn,
                f"convscope {n_used} samples, seed-to-seed rank correlation {ours_stab:.3f}; lime "
                f"package's by samples: {', '.join(ladder)}")
            return
    row(name, "lime", "equal stability (not reached by the lime package at 4000)", ts, tn,
        f"convscope stability {ours_stab:.3f}; lime package: {', '.join(ladder)} (ratio is a lower bound)")


def kernel_shap_default(name: str, lm: Any, x: torch.Tensor, repeat: int) -> None:
    from captum.attr import KernelShap

    net, pre = lm.model, lm.preprocessing
    with torch.no_grad():
        t = int(net(x).argmax())
    seg = segment(x[0], "slic", n_segments=50)
    if int(seg.max()) + 1 < 16:
        seg = segment(x[0], "grid", cell=x.shape[-1] // 8)
    ts, e = timed(lambda: cs.explain(lm, x, method="kernel_shap", target=t, segmentation=seg), repeat)
    n_used = e.diagnostics["n_samples"][0]
    c = x.shape[1]
    fm = seg[None, None].expand(1, c, *seg.shape)
    grey = baseline(x[0], "grey", pre)
    ks = KernelShap(net)
    tc, _ = timed(lambda: ks.attribute(x, target=t, feature_mask=fm, n_samples=n_used,
                                       baselines=grey.expand_as(x[0])[None].contiguous(),
                                       perturbations_per_eval=e.diagnostics["engine"]["batch_size"]), repeat)
    row(name, "kernel_shap", f"equal samples ({n_used} of 1000, {int(seg.max()) + 1} segments)", ts, tc,
        f"{engine_note(e)}; stability {e.diagnostics['stability'][0]:.3f} (successive estimates), "
        f"reliability {e.diagnostics['reliability'][0]:.3f}")


def write(path: Path, args: argparse.Namespace, wall: float) -> None:
    lines = [
        "# Perturbation methods at their defaults against their peers",
        "",
        f"Generated by `benchmarks/bench_perturbation_defaults.py` ({' '.join(sys.argv[1:]) or 'defaults'}) "
        f"on {platform.machine()} with {os.cpu_count()} cores shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, {args.threads} torch thread(s) "
        f"for every library, median of {args.repeat} run(s), total {wall:.0f} s.",
        "",
        "`ratio` = peer seconds / convscope seconds (above 1: convscope is faster). convscope runs "
        "with no option but the target (and the segments for LIME / Kernel SHAP, shared with the "
        "peer); what its engine chose is in the note. Random weights for resnet18 / vgg16 "
        "(timing only); the digits model is the bundled trained one.",
        "",
        "| model | method | comparison | convscope s | peer s | ratio | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        lines.append(f"| {r['model']} | {r['method']} | {r['what']} | {r['ours']:.2f} | {r['peer']:.2f} | "
                     f"{r['ratio']:.2f} | {r['note']} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="the digits model only")
    p.add_argument("--out", default=str(ROOT / "results" / "perturbation_defaults.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    lm = cs.load_model("digits-cnn")
    from convscope.datasets import digits

    xd = lm.preprocessing.normalize(digits().split("test")[0][:1])
    rd = max(args.repeat, 3)  # digits runs are short: medians of 3 at least
    occlusion_default("digits", lm, xd, rd, check=True)
    lime_default("digits", lm, xd, rd)
    kernel_shap_default("digits", lm, xd, rd)
    if not args.quick:
        import torchvision

        torch.manual_seed(0)
        r18 = cs.load_model(torchvision.models.resnet18(weights=None).eval(), preprocessing="imagenet")
        x224 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        occlusion_default("resnet18", r18, x224, args.repeat)
        vgg = cs.load_model(torchvision.models.vgg16(weights=None).eval(), preprocessing="imagenet")
        x112 = x224[:, :, ::2, ::2].contiguous()
        occlusion_default("vgg16", vgg, x112, args.repeat)
        lime_default("resnet18", r18, x112, args.repeat)
        kernel_shap_default("resnet18", r18, x112, args.repeat)
    write(Path(args.out), args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
