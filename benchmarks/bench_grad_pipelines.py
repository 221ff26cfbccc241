"""The dataset audit and the report build, one code tree against another, side by side (issue #29).

Runs the same work as ``bench_audit.py`` (``convscope.audit`` with Grad-CAM on torchvision resnet18,
random weights, over ``--images`` 224 px PNGs in 5 class folders, batch 16, chunks of 64) and
``bench_report.py`` (``explain_report`` of one 224 px image with every registered method at its
defaults, on resnet18), each in a fresh process, once with the ``src`` of ``--tree`` (default
``HEAD``: what is committed, so editing the work tree during the run changes nothing) and once with
``--base``'s (git revisions, extracted with ``git archive`` into a temporary folder: no worktree is
made), alternating between the trees run after run, so both see the same machine. Reports the wall
time and the CPU time of each child process (``RUSAGE_CHILDREN``: user + system, all its threads),
medians over ``--repeats``; on a shared machine the CPU time moves less than the wall time.

    python benchmarks/bench_grad_pipelines.py [--base REV] [--tree REV] [--images 2000] [--repeats 1]

Writes ``benchmarks/results/grad_pipelines.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_audit import CHILD as AUDIT_CHILD  # this folder is on sys.path when run as a script
from bench_audit import make_folder
from bench_report import CHILD as REPORT_CHILD

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "grad_pipelines.md"


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(src: Path, argv: list[str], threads: int) -> tuple[float, float]:
    """(wall s, CPU s) of one child process run with ``PYTHONPATH=src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    c0, t0 = _cpu_children(), time.perf_counter()
    p = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - t0, _cpu_children() - c0
    if p.returncode != 0:
        raise SystemExit(f"benchmark child failed ({src}):\n{p.stderr[-2000:]}")
    json.loads(p.stdout.strip().splitlines()[-1])  # the child finished its work and reported
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--tree", default="HEAD", help="git revision measured against it (default: HEAD)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the audit children "
                    "(the report child sets 2, as bench_report.py does)")
    ap.add_argument("--skip", choices=("audit", "report"), action="append", default=[])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    revs = [subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", r], check=True,
                           capture_output=True, text=True).stdout.strip() for r in (args.base, args.tree)]
    trees = {f"base {args.base} ({revs[0]})": revs[0], f"{args.tree} ({revs[1]})": revs[1]}
    srcs: dict[str, Path] = {}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, rev) in enumerate(trees.items()):
            folder = Path(tmp) / f"tree{i}"
            folder.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
            srcs[name] = folder / "src"
        (Path(tmp) / "audit.py").write_text(AUDIT_CHILD)
        (Path(tmp) / "report.py").write_text(REPORT_CHILD)
        if "audit" not in args.skip:
            make_folder(Path(tmp) / "images", args.images)
        order = list(srcs.items())
        for r in range(args.repeats):
            for name, src in (order if r % 2 == 0 else order[::-1]):  # alternate which runs first
                if "audit" not in args.skip:
                    store = Path(tmp) / f"audit-{r}-{len(times)}.zarr"
                    got = _run(src, [str(Path(tmp) / "audit.py"), "audit", str(Path(tmp) / "images"),
                                     str(store), str(args.threads)], args.threads)
                    times.setdefault(("audit", name), []).append(got)
                    print("audit", name, got, flush=True)
                if "report" not in args.skip:
                    got = _run(src, [str(Path(tmp) / "report.py"), "224", "report"], 2)
                    times.setdefault(("report", name), []).append(got)
                    print("report", name, got, flush=True)
    names = list(trees)
    lines = [
        "# The audit and the report build, base against this tree (issue #29)",
        "",
        f"`python benchmarks/bench_grad_pipelines.py --base {args.base} --tree {args.tree} --images "
        f"{args.images} --repeats {args.repeats}`; {platform.machine()}, {os.cpu_count()} CPUs (load "
        f"average {load0:.1f} at the "
        f"start), torch threads: audit {args.threads}, report 2. Each run a fresh process; the trees "
        "alternate. Medians; CPU time is the child's user + system time (all its threads).",
        "",
        "| work | tree | wall s | CPU s | CPU / base |",
        "|---|---|---|---|---|",
    ]
    for work in ("audit", "report"):
        if (work, names[0]) not in times:
            continue
        base_cpu = statistics.median(c for _, c in times[(work, names[0])])
        what = f"audit, {args.images} images" if work == "audit" else "report, 1 image, every method"
        for name in names:
            w = statistics.median(v for v, _ in times[(work, name)])
            c = statistics.median(v for _, v in times[(work, name)])
            lines.append(f"| {what} | {name} | {w:.1f} | {c:.1f} | {c / base_cpu:.3f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
