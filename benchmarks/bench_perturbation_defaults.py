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
  kernel, same sample distribution): at equal samples (the lime package gets as many samples as
  convscope used, at convscope's batch size and at its own default batch of 10; the three
  timings interleaved in one loop), and at equal stability: stability is the Spearman rank
  correlation of the segment weights of two runs with different seeds, averaged over several
  seed pairs; the lime package's is measured at multiples of convscope's sample count, the count
  where it reaches convscope's is interpolated (log-linear between bracketing counts, else
  Spearman-Brown from the nearest), and its time there is its measured seconds per sample times
  that count.
* **kernel_shap** at defaults against Captum's ``KernelShap`` at equal samples (the count
  convscope used; ``perturbations_per_eval`` = convscope's batch size).

The machine is shared: every library gets the same torch thread count, each timing is the median
of ``--repeat`` runs, and all ratios come from one run. Usage:
``python benchmarks/bench_perturbation_defaults.py [--repeat 1] [--threads 1] [--quick]``; writes
``benchmarks/results/perturbation_defaults.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

import convscope as cs
from convscope.methods.attribution.segments import segment
from convscope.models.inputs import baseline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_perturbation import timed, write_table  # noqa: E402  (the one timing helper, table writer)

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


def samples_for(ladder: list[tuple[int, float]], target: float) -> float:
    """The samples at which the lime package's seed-to-seed rank correlation reaches ``target``:
    interpolated (linearly in log samples) between the two measured counts that bracket it, or,
    outside them, extrapolated from the nearest by the Spearman-Brown law
    ``r(n) = n r1 / (1 + (n - 1) r1)``."""
    pts = sorted(ladder)
    for (n0, s0), (n1, s1) in zip(pts, pts[1:], strict=False):
        if s0 < target <= s1:
            return float(np.exp(np.log(n0) + (target - s0) / (s1 - s0) * (np.log(n1) - np.log(n0))))
    n0, s0 = pts[-1] if target > pts[-1][1] else pts[0]
    s0 = min(max(s0, 1e-3), 0.999)
    r1 = s0 / (n0 - (n0 - 1) * s0)
    return target * (1 - r1) / (r1 * (1 - min(target, 0.999)))


def lime_default(name: str, lm: Any, x: torch.Tensor, repeat: int, pairs: int,
                 ladder: tuple[float, ...]) -> None:
    """LIME at defaults against the lime package: timings interleaved in one loop (ours, the
    package at our batch size, the package at its default batch 10), then the seed-to-seed rank
    correlation of both at equal samples and the package's at ``ladder`` multiples of our count,
    averaged over ``pairs`` seed pairs."""
    from lime.lime_image import LimeImageExplainer

    net, pre = lm.model, lm.preprocessing
    with torch.no_grad():
        t = int(net(x).argmax())
    seg = segment(x[0], "slic", n_segments=50)
    if int(seg.max()) + 1 < 16:  # SLIC on a random-noise image: a grid of 64 cells instead
        seg = segment(x[0], "grid", cell=x.shape[-1] // 8)
    d = int(seg.max()) + 1
    opts = dict(method="lime", target=t, segmentation=seg)

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

    def peer(n: int, seed: int, batch: int = 10) -> list[float]:
        # its samples come from the explainer's random_state (random_seed only seeds segmentation)
        explainer = LimeImageExplainer(verbose=False, random_state=seed)
        exp = explainer.explain_instance(img, classifier_fn, labels=(t,), top_labels=None, num_samples=n,
                                         hide_color=grey, segmentation_fn=lambda _im: seg_np,
                                         random_seed=seed, batch_size=batch)
        w = dict(exp.local_exp[t])
        return [w.get(i, 0.0) for i in range(d)]

    e0 = cs.explain(lm, x, seed=0, **opts)  # warm-up; fixes the sample count and the batch size
    n_used, bs = e0.diagnostics["n_samples"][0], e0.diagnostics["engine"]["batch_size"]
    times: dict[str, list[float]] = {"ours": [], "peer": [], "peer10": []}
    for _ in range(repeat):  # interleaved, so a change of load hits all three alike
        for key, fn in (("ours", lambda: cs.explain(lm, x, seed=0, **opts)),
                        ("peer", lambda: peer(n_used, 0, bs)), ("peer10", lambda: peer(n_used, 0, 10))):
            times[key].append(timed(fn, 1)[0])
    ts, tp, tp10 = (float(np.median(times[k])) for k in ("ours", "peer", "peer10"))

    ours = [cs.explain(lm, x, seed=s, **opts).diagnostics for s in range(2 * pairs)]
    wts = [o["segment_weights"][0] for o in ours]
    ours_stab = float(np.mean([stability(wts[2 * i], wts[2 * i + 1]) for i in range(pairs)]))
    used = [o["n_samples"][0] for o in ours]
    pred = float(np.mean([o["reliability"][0] for o in ours]))
    measured = []
    for k in ladder:
        n = int(round(k * n_used))
        measured.append((n, float(np.mean([stability(peer(n, 2 * i, bs), peer(n, 2 * i + 1, bs))
                                           for i in range(pairs)]))))
    lad = ", ".join(f"{n}: {s:.3f}" for n, s in measured)
    row(name, "lime", f"equal samples ({n_used} of 1000, {d} segments), lime package at our batch {bs}",
        ts, tp,
        f"{engine_note(e0)}; lime package at its default batch 10: {tp10:.2f} s (ratio {tp10 / ts:.2f}); "
        f"seed-to-seed rank correlation at these samples: convscope {ours_stab:.3f}, lime package "
        f"{dict(measured).get(n_used, float('nan')):.3f}")
    need = samples_for(measured, ours_stab)
    tneed = tp / n_used * need
    row(name, "lime", f"equal stability (lime package needs ~{need:.0f} samples, batch {bs})", ts, tneed,
        f"convscope: {min(used)}-{max(used)} samples, seed-to-seed rank correlation {ours_stab:.3f} "
        f"(mean of {pairs} seed pair(s); its own split-half prediction {pred:.3f}); lime package by samples: "
        f"{lad}; its time = its measured s/sample x samples needed")


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
    write_table(
        path, "Perturbation methods at their defaults against their peers", "bench_perturbation_defaults.py",
        args, wall,
        ["`ratio` = peer seconds / convscope seconds (above 1: convscope is faster). convscope runs "
         "with no option but the target (and the segments for LIME / Kernel SHAP, shared with the "
         "peer); what its engine chose is in the note. Random weights for resnet18 / vgg16 "
         "(timing only); the digits model is the bundled trained one."],
        ["model", "method", "comparison", "convscope s", "peer s", "ratio", "note"],
        [[r["model"], r["method"], r["what"], f"{r['ours']:.2f}", f"{r['peer']:.2f}", f"{r['ratio']:.2f}",
          r["note"]] for r in ROWS])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="the digits model only")
    p.add_argument("--only", default="occlusion,lime,kernel_shap", help="comma list of methods to run")
    p.add_argument("--out", default=str(ROOT / "results" / "perturbation_defaults.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    lm = cs.load_model("digits-cnn")
    from convscope.data.toydata import digits

    xd = lm.preprocessing.normalize(digits().split("test")[0][:1])
    rd = max(args.repeat, 3)  # digits runs are short: medians of 3 at least
    only = set(args.only.split(","))
    if "occlusion" in only:
        occlusion_default("digits", lm, xd, rd, check=True)
    if "lime" in only:
        lime_default("digits", lm, xd, rd, pairs=6, ladder=(0.5, 1, 2, 4))
    if "kernel_shap" in only:
        kernel_shap_default("digits", lm, xd, rd)
    if not args.quick:
        import torchvision

        torch.manual_seed(0)
        r18 = cs.load_model(torchvision.models.resnet18(weights=None).eval(), preprocessing="imagenet")
        x224 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        x112 = x224[:, :, ::2, ::2].contiguous()
        if "occlusion" in only:
            occlusion_default("resnet18", r18, x224, args.repeat)
            vgg = cs.load_model(torchvision.models.vgg16(weights=None).eval(), preprocessing="imagenet")
            occlusion_default("vgg16", vgg, x112, args.repeat)
        if "lime" in only:
            lime_default("resnet18", r18, x112, args.repeat, pairs=2, ladder=(1, 2))
        if "kernel_shap" in only:
            kernel_shap_default("resnet18", r18, x112, args.repeat)
    write(Path(args.out), args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
