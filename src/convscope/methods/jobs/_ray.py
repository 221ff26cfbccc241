"""The Ray engine of :func:`convscope.methods.jobs.run_batch`, and a local Ray that dies with its driver.

``ray.init()`` without an address starts a local Ray: a GCS server, a raylet and, under the
raylet, worker processes and per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``).
When the driver is killed (SIGKILL, the OOM killer) Ray stops the raylet and its workers on its
own, but the agents were found still running minutes later (Ray 2.60). So when convscope starts the
local Ray itself, it also starts a watchdog: a small process in a session of its own that holds
the read end of a pipe whose write end only the driver holds. When the driver dies, for whatever
reason, the pipe closes and the watchdog kills every process of that Ray (the processes the start
created and all their descendants, followed once a second while the driver lives; each checked by
its start time, so a reused process id is never hit). A Ray the user runs (``ray_address``,
``RAY_ADDRESS``, or one already initialised in this process) is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.core import errors
from convscope.core.errors import ConvscopeError, InputError
from convscope.methods.jobs.store import BatchStore

if TYPE_CHECKING:
    from convscope.methods.jobs.batch import BatchJob

__all__ = ["run_ray", "start_local_ray"]

# Run by ``python -c`` in the watchdog process: argv holds the Ray processes' ids.
_WATCHDOG = """
import os, select, signal, sys
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)
known = {}
def grow():
    for pid in [int(a) for a in sys.argv[1:]] + [p.pid for p in list(known.values())]:
        try:
            p = known.setdefault(pid, psutil.Process(pid))
            for c in p.children(recursive=True):
                known.setdefault(c.pid, c)
        except psutil.Error:
            pass
fd = sys.stdin.fileno()
while True:
    grow()
    ready, _, _ = select.select([fd], [], [], 1.0)
    if ready and not os.read(fd, 1):
        break
grow()
alive = []
for p in known.values():
    try:
        if p.is_running():
            p.kill()
            alive.append(p)
    except psutil.Error:
        pass
psutil.wait_procs(alive, timeout=10)
"""

_WATCHDOGS: list[subprocess.Popen] = []  # kept open for the life of this process


def start_local_ray(ray: Any, address: str | None) -> None:
    """``ray.init`` for a batch job; a local Ray started here gets a watchdog (module docstring)."""
    import psutil

    own = address is None and not os.environ.get("RAY_ADDRESS")
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)} if own else set()
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if not own:
        return
    started = [c.pid for c in me.children(recursive=True) if c.pid not in before]
    if started:
        _WATCHDOGS.append(subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, *map(str, started)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            close_fds=True))


class _RayChunkWorker:
    """A Ray actor holding the model; maps batches of chunk ids to their sizes."""

    def __init__(self, job: BatchJob) -> None:
        self.job = job
        self.store = job.open_store()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes, failed = [], []
        for c in batch["chunk"]:
            try:
                sizes.append(self.job.run_chunk(int(c), self.store))
                failed.append("")
            except ConvscopeError as exc:  # bad input: handed back as a row, raised as one line
                sizes.append(-1)
                failed.append(f"{type(exc).__name__}\n{exc.args[0] if exc.args else exc}")
        return {"chunk": np.asarray(batch["chunk"]), "size": np.asarray(sizes, dtype=np.int64),
                "error": np.asarray(failed, dtype=str)}


def _raise_chunk_error(text: str) -> None:
    """Raise an actor's :class:`ConvscopeError` (``"Name\\nmessage"``) here, as its one-line error
    (a Ray task error would print the actor's traceback)."""
    name, _, message = text.partition("\n")
    cls = getattr(errors, name, None)
    raise (cls if isinstance(cls, type) and issubclass(cls, ConvscopeError) else InputError)(message)


def run_ray(
    job: BatchJob,
    store: BatchStore,
    pending: list[int],
    ray_address: str | None,
    slots: int | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Compute the ``pending`` chunks of ``job`` with a Ray Data actor pool (``slots`` actors)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'convscope[ray]'") from None
    if not ray.is_initialized():
        start_local_ray(ray, ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        ctx.print_on_execution_start = False
    except AttributeError:
        pass
    gpu = job.device is not None and str(job.device).startswith("cuda")
    res = ray.cluster_resources()
    n = slots or max(1, int(res.get("GPU" if gpu else "CPU", 1)))
    n = max(1, min(n, len(pending)))
    job.threads = job.threads or 1
    ds = ray.data.from_items([{"chunk": c} for c in pending], override_num_blocks=len(pending))
    out = ds.map_batches(
        _RayChunkWorker,
        fn_constructor_args=(job,),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=n),
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    done = store.n_chunks - len(pending)
    for row in out.iter_rows():
        if row.get("error"):
            _raise_chunk_error(str(row["error"]))
        done += 1
        if progress is not None:
            progress(done, store.n_chunks)
