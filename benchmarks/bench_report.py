"""`convscope report` of one image with every method, against the same methods run alone.

For one torchvision resnet18 (random weights; timings do not depend on them) and one 224 px image
(scikit-image's astronaut), each measured in its own process with 2 threads:

1. ``explain_report`` with every registered method at its defaults (what ``convscope report``
   runs), the model loaded once;
2. the sum of ``convscope.explain`` run alone for each of those methods at its defaults, on the
   same already-loaded model (the strict comparison: no model load is counted);
3. the same report with the previous release (``--previous REV``, default the last landed
   commit), checked out in a temporary git worktree and run from its ``src/``.

It also counts the model's forward passes in the report and in the methods run alone (this tree).
Target: report <= 1.0x the sum of the methods alone. Usage:
``python benchmarks/bench_report.py [--side 224] [--previous 2b2eae4|none] [--out FILE]``. Writes
``benchmarks/results/report.md`` (a smoke run: ``--side 32 --previous none --out /tmp/r.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "report.md"

CHILD = r"""
import json, sys, time, torch, torchvision
import numpy as np
from PIL import Image
from skimage import data
torch.set_num_threads(2)
import convscope as cs
from convscope.frontends.report.build import explain_report
side = int(sys.argv[1])
img = Image.fromarray(data.astronaut()).resize((side, side))
torch.manual_seed(0)
net = torchvision.models.resnet18(num_classes=1000).eval()
# ImageNet's preprocessing; another side is kept as it is (the preset would crop it to 224 px)
pre = "imagenet" if side == 224 else {"preset": "imagenet", "size": side, "resize": None}
lm = cs.load_model(net, preprocessing=pre, class_names=[f"class {i}" for i in range(1000)])
names = cs.method_names()
with torch.no_grad():
    lm.model(torch.zeros(1, 3, side, side))  # warm-up
import contextlib
calls = [0]
def tick():
    calls[0] += 1
    return False
try:  # count the model's forward passes where this tree can (hooks only through convscope.core.hooks)
    from convscope.core.hooks import stop_forward_when
    counting = lambda: stop_forward_when(lm.model, tick, RuntimeError)
except ImportError:
    counting, calls = contextlib.nullcontext, [None]
alone, alone_calls = {}, 0
if sys.argv[2] == "all":
    for name in names:
        t0 = time.perf_counter()
        try:
            with counting():
                cs.explain(lm, img, method=name)
            alone[name] = time.perf_counter() - t0
        except Exception as exc:  # a method that cannot run here is reported, not timed
            alone[name] = f"failed: {exc}"
    alone_calls, calls[0] = calls[0], 0
t0 = time.perf_counter()
with counting():
    rep = explain_report(images=[img], model=lm, progress=False)
t_report = time.perf_counter() - t0
print(json.dumps({"report": t_report, "alone": alone, "methods": names, "report_calls": calls[0],
                  "alone_calls": alone_calls}))
"""


def _child(src: Path, side: int, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(side), mode], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed ({src}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=224,
                    help="image side in pixels (a small one for a smoke run)")
    ap.add_argument("--previous", default="2b2eae4",
                    help="git revision of the previous release; 'none' skips that run")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"where to write the table (default {RESULTS})")
    args = ap.parse_args()
    now = _child(ROOT / "src", args.side, "all")
    prev = None
    if args.previous.lower() != "none":
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "prev"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(wt),
                            args.previous], check=True)
            try:
                prev = _child(wt / "src", args.side, "report")
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)],
                               check=False)
    timed = {k: v for k, v in now["alone"].items() if isinstance(v, float)}
    total = sum(timed.values())
    rows = [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in now["alone"].items()]
    prev_row = ([] if prev is None else
                [f"| report, previous release `{args.previous}` | {prev['report']:.1f} | "
                 f"{now['report'] / prev['report']:.2f}x (this / previous) |"])
    lines = [
        "# `convscope report`: one resnet18 image, every method",
        "",
        f"resnet18 (random weights), one {args.side} px image, {len(now['methods'])} methods at their "
        f"defaults; CPU, 2 threads; {platform.processor() or platform.machine()}, torch "
        f"{__import__('torch').__version__}. Produced by `python benchmarks/bench_report.py"
        f"{'' if args.side == 224 else f' --side {args.side}'}`.",
        "",
        "| measured | seconds | ratio |",
        "|---|---|---|",
        f"| report (this tree) | {now['report']:.1f} | 1.00 |",
        f"| sum of the methods run alone (same loaded model) | {total:.1f} | "
        f"{now['report'] / total:.2f}x (report / sum) |",
        *prev_row,
        "",
        f"Forward passes of the model: {now['report_calls']} in the report (its class probabilities "
        f"included), {now['alone_calls']} for the methods run alone (the report shares the clean "
        "logits, the CAM layer passes and the input gradients between methods).",
        "",
        "Each method alone (`convscope.explain`, seconds):",
        "",
        "| method | seconds |",
        "|---|---|",
        *rows,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
