"""Run every benchmark in this folder, one after the other, each writing its results/*.md.

    python benchmarks/run_all.py [--only gradients,cam]

Each script is run in its own process with its default arguments (see each script's --help), so
one failure does not stop the others; the exit status is non-zero if any failed. The peers
(Captum, TorchCAM, lime, pytorch-grad-cam, Lucent; zennit-crp in /tmp/crpenv) must be installed
(``make benchmarks`` does that).
Timings move with the machine's load: run on an otherwise idle machine and read the ratios.
Each script rewrites its results file: the hand-written readings under the tables in the
committed files are not kept, so diff before committing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("gradients", "cam", "grad_cost", "perturbation", "featvis", "dataset", "synthesis", "audit",
         "report", "concepts", "lrp", "crp_peer", "atlas", "attention", "metrics")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(NAMES), help="comma-separated subset of " + ", ".join(NAMES))
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== bench_{name}.py", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")])
        print(f"== bench_{name}.py: exit {rc}, {time.perf_counter() - t0:.0f} s "
              f"(results: benchmarks/results/{name}.md)", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
