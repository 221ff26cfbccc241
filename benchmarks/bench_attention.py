"""Attention methods (issue #32) against the passes they are built on, side by side in one run.

A torchvision ``VisionTransformer`` with random weights (224 px, 16-px patches, ``--layers`` blocks
of width 384 with 6 heads: ViT-S sized, nothing to download), a batch of ``--batch`` images, one
thread. Timed, interleaved, medians of ``--repeats`` rounds:

* ``forward``: the model alone, ``no_grad``, as its owner runs it (fused attention);
* ``forward, pass-through mode``: the same under a ``TorchFunctionMode`` that changes nothing: the
  cost of leaving PyTorch's fused ``nn.MultiheadAttention`` fast path, which any function mode (the
  capture's included) turns off;
* ``forward+backward``: the model with a graph from the input and the backward of the target
  scores to the input (the weights frozen, as convscope's state guard freezes them);
* ``raw_attention``, ``rollout``: ``convscope.explain`` (the whole facade) vs ``forward``
  (target: at most 1.2x);
* ``chefer``, ``legrad``: ``convscope.explain`` vs ``forward+backward`` (target: at most 1.3x);
* ``torchcam legrad``: TorchCAM 0.5.0's ``LeGrad`` on the same blocks (all of them): hooks, a
  forward with gradients and its call, vs our ``legrad`` (target: ours at least as fast).

    python benchmarks/bench_attention.py [--batch 4] [--layers 6] [--repeats 5]

Results go to ``benchmarks/results/attention.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch.overrides import TorchFunctionMode

import convscope as cs


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    """Run the benchmark and write benchmarks/results/attention.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=args.layers,
                                               num_heads=6, hidden_dim=384, mlp_dim=1536).eval()
    torch.nn.init.normal_(net.heads.head.weight, std=0.02)  # torchvision starts the head at zero
    lm = cs.load_model(net, preprocessing={"size": (224, 224), "resize": None})
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = [int(i) % 1000 for i in range(args.batch)]
    blocks = list(net.encoder.layers)

    def forward() -> None:
        with torch.no_grad():
            net(x)

    class PassThrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            return func(*args, **(kwargs or {}))

    def forward_mode() -> None:
        with torch.no_grad(), PassThrough():
            net(x)

    def forward_backward() -> None:
        for p in net.parameters():
            p.requires_grad_(False)
        try:
            xb = x.clone().requires_grad_(True)
            out = net(xb)
            torch.autograd.grad(out.gather(1, torch.tensor(target)[:, None]).sum(), xb)
        finally:
            for p in net.parameters():
                p.requires_grad_(True)

    def explain(method: str) -> Callable[[], None]:
        def run() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cs.explain(lm, x, method=method, target=target, batch_size=args.batch)
        return run

    def torchcam_legrad() -> None:
        from torchcam.methods import LeGrad

        with LeGrad(net, blocks) as ext:
            scores = net(x)
            ext(target, scores, normalized=False)

    runs = {"forward": forward, "forward, pass-through mode": forward_mode,
            "forward+backward": forward_backward,
            **{m: explain(m) for m in ("raw_attention", "rollout", "chefer", "legrad")},
            "torchcam legrad": torchcam_legrad}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            times[k].append(_time(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("forward, pass-through mode / forward", med["forward, pass-through mode"] / med["forward"], "-"),
        ("raw_attention / forward", med["raw_attention"] / med["forward"], "<= 1.2"),
        ("rollout / forward", med["rollout"] / med["forward"], "<= 1.2"),
        ("chefer / forward+backward", med["chefer"] / med["forward+backward"], "<= 1.3"),
        ("legrad / forward+backward", med["legrad"] / med["forward+backward"], "<= 1.3"),
        ("legrad / torchcam legrad", med["legrad"] / med["torchcam legrad"], "<= 1.0"),
    ]
    lines = [
        "# Attention methods: cost against the passes they are built on",
        "",
        f"`python benchmarks/bench_attention.py --batch {args.batch} --layers {args.layers} "
        f"--repeats {args.repeats}`: torchvision ViT (224 px, 16-px patches, {args.layers} blocks, "
        f"width 384, 6 heads, random weights), batch {args.batch}, 1 thread, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; medians of "
        f"{args.repeats} interleaved rounds (a shared machine: other jobs ran beside it).",
        "",
        "| pass | median s |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in med.items()],
        "",
        "| ratio | measured | target (issue #32) |",
        "|---|---|---|",
        *[f"| {name} | {r:.2f} | {want} |" for name, r, want in rows],
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
