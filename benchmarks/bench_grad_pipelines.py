"""The dataset audit and the report build, one code tree against another, side by side (issue #29).

Runs the same work as ``bench_audit.py`` (``convscope.audit`` with Grad-CAM on torchvision resnet18,
random weights, over ``--images`` 224 px PNGs in 5 class folders, batch 16, chunks of 64) and
``bench_report.py`` (``explain_report`` of one 224 px image with every registered method at its
defaults, on resnet18), each in a fresh process, once with the ``src`` of ``--tree`` (default
``HEAD``: what is committed, so editing the work tree during the run changes nothing) and once with
``--base``'s (git revisions, extracted with ``git archive`` into a temporary folder: no worktree is
made). The two trees' runs of the same work start together (``--together``, the default: both see
the same machine for the same minutes; ``--no-together``: one after the other, alternating which
goes first). Reports the wall time and the CPU time of each child process (``os.wait4``: its user +
system time, all its threads), medians over ``--repeats``; on a shared machine the CPU time moves
less than the wall time.

    python benchmarks/bench_grad_pipelines.py [--base REV] [--tree REV] [--images 2000] [--repeats 1]

Writes ``benchmarks/results/grad_pipelines.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def _start(src: Path, argv: list[str], threads: int, log: Path) -> tuple[subprocess.Popen, float, Path]:
    """A child process run with ``PYTHONPATH=src``, its output to files (no pipe can fill)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        p = subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=err)
    return p, time.perf_counter(), log


def _finish(p: subprocess.Popen, t0: float, log: Path) -> tuple[float, float]:
    """(wall s, CPU s: user + system of that child alone) once it ends."""
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"benchmark child failed ({log}):\n{log.with_suffix('.err').read_text()[-2000:]}")
    json.loads(log.with_suffix(".out").read_text().strip().splitlines()[-1])  # it finished and reported
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--tree", default="HEAD", help="git revision measured against it (default: HEAD)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the audit children "
                    "(the report child sets 2, as bench_report.py does)")
    ap.add_argument("--together", action=argparse.BooleanOptionalAction, default=True)
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
        works = [w for w in ("audit", "report") if w not in args.skip]
        for r in range(args.repeats):
            for work in works:
                pending = []
                for k, (name, src) in enumerate(order if r % 2 == 0 else order[::-1]):
                    log = Path(tmp) / f"{work}-{r}-{k}"
                    argv = ([str(Path(tmp) / "audit.py"), "audit", str(Path(tmp) / "images"),
                             str(log.with_suffix(".zarr")), str(args.threads)] if work == "audit"
                            else [str(Path(tmp) / "report.py"), "224", "report"])
                    pending.append((name, _start(src, argv, args.threads if work == "audit" else 2, log)))
                    if not args.together:
                        pending[-1] = (name, _finish(*pending[-1][1]))  # type: ignore[arg-type]
                for name, run in pending:
                    got = run if not args.together else _finish(*run)  # type: ignore[arg-type]
                    times.setdefault((work, name), []).append(got)  # type: ignore[arg-type]
                    print(work, name, got, flush=True)
    names = list(trees)
    lines = [
        "# The audit and the report build, base against this tree (issue #29)",
        "",
        f"`python benchmarks/bench_grad_pipelines.py --base {args.base} --tree {args.tree} --images "
        f"{args.images} --repeats {args.repeats}`; {platform.machine()}, {os.cpu_count()} CPUs (load "
        f"average {load0:.1f} at the "
        f"start), torch threads: audit {args.threads}, report 2. Each run a fresh process; the two "
        f"trees' runs {'start together' if args.together else 'alternate'}. Medians; CPU time is the "
        "child's user + system time (all its threads).",
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
