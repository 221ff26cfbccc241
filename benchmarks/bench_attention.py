"""Attention methods (issue #32) against the passes they are built on, side by side in one run.

ViT-S-sized models with random weights (224 px, 16-px patches, ``--layers`` blocks of width 384
with 6 heads; nothing to download), a batch of ``--batch`` images, one thread, for each of
``--arch``: torchvision's ``VisionTransformer`` (``nn.MultiheadAttention``) and timm's
``VisionTransformer`` (``F.scaled_dot_product_attention``). CPU time of each pass, the passes
interleaved in each of ``--repeats`` rounds; a ratio is the median over rounds of the ratio within
a round (the two passes ran seconds apart, so the load of a shared machine mostly cancels):

* ``forward``: the model alone, ``no_grad``, as its owner runs it (fused attention: PyTorch's
  native MHA fast path, or timm's SDPA): the bound the targets are measured against;
* ``forward, attention captured``: the same pass inside the capture the methods use, every
  block's probabilities kept (hooks; no method, no facade): what reading the attention costs;
* ``forward, pass-through mode`` (torchvision): under a ``TorchFunctionMode`` that changes
  nothing, the price the earlier capture paid before computing anything (no native fast path);
* ``forward+backward``: the model with a graph from the input and the backward of the target
  scores to the input (the weights frozen, as convscope's state guard freezes them);
* ``raw_attention``, ``rollout``: ``convscope.explain`` (the whole facade) vs ``forward``
  (target: at most 1.2x);
* ``chefer``, ``legrad``: ``convscope.explain`` vs ``forward+backward`` (target: at most 1.3x);
* ``torchcam legrad`` (torchvision): TorchCAM 0.5.0's ``LeGrad`` on the same blocks (all of them):
  hooks, a forward with gradients and its call, vs our ``legrad`` (target: ours at least as fast).

    python benchmarks/bench_attention.py [--batch 4] [--layers 6] [--repeats 11] [--arch torchvision,timm]

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
from convscope.methods.attribution._attn_capture import attention_capture

TARGETS = {"raw_attention": ("forward", "<= 1.2"), "rollout": ("forward", "<= 1.2"),
           "chefer": ("forward+backward", "<= 1.3"), "legrad": ("forward+backward", "<= 1.3"),
           "forward, attention captured": ("forward", "-"), "forward, pass-through mode": ("forward", "-")}


def _cpu(fn: Callable[[], object]) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def _model(arch: str, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "timm":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=layers, num_heads=6,
                                 num_classes=1000).eval()
    net = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=layers,
                                               num_heads=6, hidden_dim=384, mlp_dim=1536).eval()
    torch.nn.init.normal_(net.heads.head.weight, std=0.02)  # torchvision starts the head at zero
    return net


def _ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of ``a``'s time over ``b``'s in the same round."""
    return statistics.median(p / q for p, q in zip(times[a], times[b], strict=True))


class _PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return func(*args, **(kwargs or {}))


def _runs(arch: str, net: torch.nn.Module, x: torch.Tensor, target: list[int],
          batch: int) -> dict[str, Callable[[], None]]:
    lm = cs.load_model(net, preprocessing={"size": (224, 224), "resize": None})

    def forward() -> None:
        with torch.no_grad():
            net(x)

    def captured() -> None:
        with torch.no_grad(), attention_capture(net):
            net(x)

    def pass_through() -> None:
        with torch.no_grad(), _PassThrough():
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
                cs.explain(lm, x, method=method, target=target, batch_size=batch)
        return run

    def torchcam_legrad() -> None:
        from torchcam.methods import LeGrad

        with LeGrad(net, list(net.encoder.layers)) as ext:
            scores = net(x)
            ext(target, scores, normalized=False)

    runs = {"forward": forward, "forward, attention captured": captured}
    if arch == "torchvision":
        runs["forward, pass-through mode"] = pass_through
    runs["forward+backward"] = forward_backward
    runs.update({m: explain(m) for m in ("raw_attention", "rollout", "chefer", "legrad")})
    if arch == "torchvision":
        runs["torchcam legrad"] = torchcam_legrad
    return runs


def main() -> None:
    """Run the benchmark and write benchmarks/results/attention.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--arch", default="torchvision,timm")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    target = [int(i) % 1000 for i in range(args.batch)]
    cmd = (f"python benchmarks/bench_attention.py --batch {args.batch} --layers {args.layers} "
           f"--repeats {args.repeats} --arch {args.arch}")
    lines = [
        "# Attention methods: cost against the passes they are built on", "",
        f"`{cmd}`: ViT-S-sized models (224 px, 16-px patches, {args.layers} blocks, width 384, 6 heads, "
        f"random weights), batch {args.batch}, 1 thread, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}. CPU seconds: medians of {args.repeats} interleaved rounds; ratios: "
        "the median over rounds of the ratio within a round (a shared machine: other jobs ran beside it).",
    ]
    for arch in args.arch.split(","):
        net = _model(arch, args.layers)
        runs = _runs(arch, net, x, target, args.batch)
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                times[k].append(_cpu(fn))

        rows = [(f"{k} / {base}", _ratio(times, k, base), want) for k, (base, want) in TARGETS.items()
                if k in times]
        if "torchcam legrad" in times:
            rows.append(("legrad / torchcam legrad", _ratio(times, "legrad", "torchcam legrad"), "<= 1.0"))
        lines += [
            "", f"## {arch}", "", "| pass | median CPU s |", "|---|---|",
            *[f"| {k} | {statistics.median(v):.3f} |" for k, v in times.items()],
            "", "| ratio | measured | target (issue #32) |", "|---|---|---|",
            *[f"| {name} | {r:.2f} | {want} |" for name, r, want in rows],
        ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
