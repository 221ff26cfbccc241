"""Issue #27, item 9: a ``--engine ray`` run killed with SIGKILL leaves no Ray process behind.

Ray 2.60 stops its raylet and workers when the driver dies, but its per-node agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) kept running; convscope's watchdog kills every
process of a local Ray it started (``convscope.methods.jobs._ray``). About 30 s: Ray's start dominates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import convscope as cs

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

SCRIPT = textwrap.dedent("""
    import sys
    from convscope.methods.jobs import run_batch
    run_batch("digits-cnn", "digits", "occlusion", sys.argv[1], engine="ray", limit=64, chunk_size=4,
              batch_size=4, slots=1)
""")


def test_sigkilled_ray_run_leaves_no_ray_process(tmp_path):
    src = str(Path(cs.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "maps.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ray_procs: list = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = out / "done"
            if done.is_dir() and any(done.glob("chunk-*")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before a chunk was written"
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(p.name() for p in ray_procs)
        assert "raylet" in names and "gcs_server" in names, names
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(ray_procs, timeout=30)
        left = [f"{p.pid} {p.name()}" for p in alive]
        assert not left, f"left running after the driver was killed: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in ray_procs:  # a failing run must not leak Ray into the next test
            try:
                p.kill()
            except psutil.Error:
                pass
