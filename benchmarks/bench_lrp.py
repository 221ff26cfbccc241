"""LRP and concept-conditional heatmaps, measured side by side in one run.

1. ``lrp`` through the facade (``convscope.explain(..., method="lrp")``, composite
   ``epsilon_plus_flat``, ResNet canonizer chosen by convscope) against zennit's own ``Gradient``
   attributor with the same composite and canonizer, on torchvision resnet18 (random weights;
   timings do not depend on them), ``--side`` px, batch ``--batch``. Target: at most 1.15x.
2. Conditional heatmaps of 8 concepts (channels of ``layer3``) of one image: convscope's batched
   passes (:func:`convscope.methods.crp.conditional_relevance`, the 8 masks in one backward pass) against 8
   sequential conditional passes, one per concept (zennit-crp's way; the same code with
   ``batch_size=1``, so only the batching differs). Target: at least 3x.

CPU, 2 threads. Medians over interleaved repetitions; the ratios are what to read (the machine is
shared and noisy).

Usage: ``python benchmarks/bench_lrp.py [--reps 5] [--side 224] [--batch 8]``. Writes
``benchmarks/results/lrp.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

import convscope as cs
from convscope.methods.crp import conditional_relevance

RESULTS = Path(__file__).parent / "results" / "lrp.md"


def median_times(runs: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each run, interleaved (after one warm-up each)."""
    for fn in runs.values():  # warm-up (allocator, oneDNN primitive caches)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crp-side", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    lm = cs.load_model(net, preprocessing="imagenet")
    x = torch.randn(args.batch, 3, args.side, args.side)
    t = 7

    def ours() -> object:
        return cs.explain(lm, x, method="lrp", target=t, composite="epsilon_plus_flat", batch_size=args.batch)

    def start(out: torch.Tensor) -> torch.Tensor:  # the target logit, from the attributor's own pass
        s = torch.zeros_like(out)
        s[:, t] = out[:, t]
        return s

    def zennit() -> object:
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            with Gradient(net, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attr:
                return attr(x.clone().requires_grad_(True), start)
        finally:
            for p in net.parameters():
                p.requires_grad_(True)

    a = ours().raw  # type: ignore[attr-defined]
    b = zennit()[1]  # type: ignore[index]
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    lrp_t = median_times({"zennit": zennit, "convscope": ours}, args.reps)

    x1 = torch.randn(1, 3, args.crp_side, args.crp_side)
    masks = torch.eye(256)[torch.arange(0, 256, 32)]  # 8 channels of layer3

    def score(out: torch.Tensor) -> torch.Tensor:
        return out[:, t]

    def batched() -> torch.Tensor:
        return conditional_relevance(lm.model, x1, "layer3", score, masks, batch_size=8)

    def sequential() -> torch.Tensor:
        return conditional_relevance(lm.model, x1, "layer3", score, masks, batch_size=1)

    same = torch.allclose(batched(), sequential(), rtol=1e-4, atol=1e-7)
    crp_t = median_times({"sequential": sequential, "batched": batched}, args.reps)

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(f"""# LRP and concept-conditional heatmaps: speed

Machine: {platform.machine()}, {torch.get_num_threads()} threads (shared), torch {torch.__version__}.
Written by `python benchmarks/bench_lrp.py`
(--reps {args.reps} --side {args.side} --batch {args.batch} --crp-side {args.crp_side}); medians of
interleaved runs. Read the ratios; absolute times move with the machine's load.

## lrp against zennit's own attributor
(resnet18 random, {args.side} px, batch {args.batch}, epsilon_plus_flat + ResNetCanonizer)

| run | time (s) | ratio to zennit |
|---|---|---|
| zennit `Gradient` | {lrp_t['zennit']:.3f} | 1.00x |
| convscope `explain(method="lrp")` | {lrp_t['convscope']:.3f} | {lrp_t['convscope'] / lrp_t['zennit']:.2f}x |

Maps agree to correlation {corr:.6f}. Both start from the target logit of their own LRP pass (zennit:
a callable `attr_output`). convscope's extra work: the coverage check, the canonizer choice, the watch
of the forward pass for functional operations, the state guard and the snapshot that undoes any change.

## 8 concept-conditional heatmaps (resnet18 `layer3`, 1 image, {args.crp_side} px)

| run | time (s) | speed-up |
|---|---|---|
| 8 sequential conditional passes (one per concept, zennit-crp's way) | {crp_t['sequential']:.3f} | 1.00x |
| batched: the 8 masks in one pass | {crp_t['batched']:.3f} | {crp_t['sequential'] / crp_t['batched']:.2f}x |

Same heatmaps: {same}.
""")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
