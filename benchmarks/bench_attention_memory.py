"""Peak memory per image of the attention methods (issue #32) at batch 1, 8, 32 and 64, one process each.

The torchvision ViT of ``bench_attention.py`` (224 px, 16-px patches, width 384, 6 heads, random
weights) with ``--layers`` blocks. Each (method, batch, chunk) runs in a fresh Python process: the
model is loaded and run once at batch 1 (warm-up), the peak resident set size is read, the method
runs on the batch, and the growth of the peak over the warm-up, divided by the batch, is the cost
per image. ``chunk`` is the methods' ``eval_batch_size`` (images per pass): ``64`` holds the whole
batch in one pass; ``8`` caps it; ``auto`` sizes it to the memory budget of
:func:`convscope.engines.perturb.auto_batch_size` (256 MiB on a CPU), from one probe image's layer
outputs and attention maps (and the graph for chefer and legrad). With ``auto`` the growth of the
peak itself (MiB, not per image) should be flat once the batch exceeds the chunk.

    python benchmarks/bench_attention_memory.py [--layers 4]

Results are appended to ``benchmarks/results/attention.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, warnings
import torch, torchvision
import convscope as cs
method, b, chunk, layers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
chunk = chunk if chunk == "auto" else int(chunk)
torch.set_num_threads(1)
torch.manual_seed(0)
net = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=layers, num_heads=6,
                                           hidden_dim=384, mlp_dim=1536).eval()
torch.nn.init.normal_(net.heads.head.weight, std=0.02)
lm = cs.load_model(net, preprocessing={"size": (224, 224), "resize": None})
x = torch.rand(b, 3, 224, 224, generator=torch.Generator().manual_seed(0))
warnings.simplefilter("ignore")
cs.explain(lm, x[:1], method=method, target=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
e = cs.explain(lm, x, method=method, target=0, eval_batch_size=chunk)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"per_image_mib": (peak - base) / 1024 / b, "mib": (peak - base) / 1024,
                  "chunk": e.diagnostics["eval_batch_size"]}))
"""


def main() -> None:
    """Run every (method, batch, chunk) in its own process and append the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention.md")
    args = ap.parse_args()
    rows, auto = [], []
    for method in ("rollout", "chefer", "legrad"):
        for chunk in ("64", "8", "auto"):
            got = []
            for b in (1, 8, 32, 64):
                cmd = [sys.executable, "-c", CHILD, method, str(b), chunk, str(args.layers)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                got.append(json.loads(res.stdout.strip().splitlines()[-1]))
            per_image = " | ".join(f"{g['per_image_mib']:.1f}" for g in got)
            rows.append(f"| {method} | {chunk} | {per_image} |")
            if chunk == "auto":
                total = " | ".join(f"{g['mib']:.0f}" for g in got)
                auto.append(f"| {method} | {got[-1]['chunk']} | {total} |")
    cmd = f"python benchmarks/bench_attention_memory.py --layers {args.layers}"
    lines = ["", f"## Peak memory per image (`{cmd}`, a shared machine under load)",
             "", "Growth of the process's peak resident set over a batch-1 warm-up, divided by the batch "
             "(MiB per image; 1 thread).", "",
             "| method | eval_batch_size (chunk) | batch 1 | batch 8 | batch 32 | batch 64 |",
             "|---|---|---|---|---|---|", *rows, "",
             'With `eval_batch_size="auto"`: the chunk it chose and the growth of the peak '
             "(MiB, whole batch).", "",
             "| method | auto chunk | batch 1 | batch 8 | batch 32 | batch 64 |", "|---|---|---|---|---|---|",
             *auto, ""]
    with args.out.open("a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
