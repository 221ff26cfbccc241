"""The web app's job queue: model work one job at a time, two lanes, bounded, timed.

* **One model shared by concurrent requests**: each request runs a method through
  :func:`~convscope.explain`, whose hooks are scoped by :func:`~convscope.capture` and whose
  state guard flips the model to eval mode with frozen weights and back. Two requests running at
  once on one module would see each other's hooks and state flips, and ``explain`` seeds torch's
  process-wide random generator. So all model work runs as jobs of one :class:`JobQueue`, one
  after the other on a single worker thread. On a CPU this costs little, since torch already
  spreads one job over the cores; one thread also keeps the allocator from spreading tensors over
  one malloc arena per request thread.
* **Bounded queue, time limit, no starvation**: at most ``max_queue`` jobs wait
  (:class:`QueueFull` beyond, HTTP 429); a job whose wait plus run passes its deadline is answered
  :class:`TimedOut` (HTTP 503) and stopped at its next forward pass (:func:`stop_after`), or never
  started. Heavy jobs (:func:`is_heavy`) wait in their own lane, and cheap jobs go first, so a
  cheap request waits for at most the job running now, plus one heavy job per
  :data:`LIGHT_BURST` cheap jobs ahead of it.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from convscope.core.errors import ConvscopeError
from convscope.methods.registry import MethodInfo

__all__ = ["LIGHT_BURST", "Busy", "JobQueue", "QueueFull", "TimedOut", "is_heavy", "stop_after"]

T = TypeVar("T")

_OUT_OF_TIME = ("the request ran out of time waiting for the model or running on it; try again, "
                "or pick a cheaper method or the quick preview")
_SHUTTING_DOWN = "the app is shutting down; try again once it is back"

#: Cheap jobs served in a row while a heavy job waits, before that heavy job gets its turn.
LIGHT_BURST = 4


class Busy(ConvscopeError):
    """The app cannot take the job now; ``retry_after`` is a guess, in whole seconds, of when it
    could (HTTP 429 or 503 with a ``Retry-After`` header)."""

    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class QueueFull(Busy):
    """:attr:`Limits.max_queue` jobs already wait (HTTP 429)."""

    status = 429


class TimedOut(Busy):
    """The job's wait plus run passed :attr:`Limits.timeout_s` (HTTP 503)."""

    status = 503


def is_heavy(info: MethodInfo) -> bool:
    """Whether a method goes to the heavy lane of the :class:`JobQueue`.

    The registry's gradient-free methods (the perturbation family, Score-CAM, Ablation-CAM,
    EigenCAM) replace one backward pass by many forward passes over masked or perturbed inputs,
    one per mask, window or channel, so their cost grows with the image and the layer; EigenCAM
    is gradient-free but needs a single pass, and rides along (it only waits a little longer).
    """
    return info.black_box or not info.needs_gradients


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)`` (hand freed heap pages back to the system), or a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> None:
        trim(0)

    return call


class _Job:
    __slots__ = ("fn", "heavy", "deadline", "future", "abandoned", "queue")

    def __init__(self, fn: Callable[[Callable[[], bool]], Any], heavy: bool, deadline: float,
                 queue: JobQueue) -> None:
        self.fn = fn
        self.heavy = heavy
        self.deadline = deadline
        self.future: Future[Any] = Future()
        self.abandoned = False
        self.queue = queue

    def expired(self) -> bool:
        """Whether the job should stop: its deadline passed, or the queue is closing."""
        return self.queue.closing or time.monotonic() >= self.deadline


class JobQueue:
    """Runs jobs one at a time on one worker thread, from two lanes, with a bounded wait.

    A job is a function ``fn(expired)``; it should call ``expired()`` at safe points and stop
    when it returns True (its deadline passed, or the queue is closing):
    :meth:`Engine.explain` checks before every forward pass of the model. Cheap jobs
    go first; a heavy job waiting behind :data:`LIGHT_BURST` cheap jobs served in a row goes next.
    Within a lane, jobs go in arrival order.

    Args:
        max_queue: most jobs waiting at once (the running one not counted).
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._light: deque[_Job] = deque()
        self._heavy: deque[_Job] = deque()
        self._burst = 0
        self._worker: threading.Thread | None = None
        self._job_s = 1.0  # running mean of a job's run time, for Retry-After
        self._trim = _malloc_trim()
        self._trimmed = 0.0
        self.closing = False
        atexit.register(self.close)  # a worker killed inside torch at exit aborts the process
        #: Jobs run to the end, and requests answered :class:`TimedOut`.
        self.done = 0
        self.timed_out = 0

    @property
    def waiting(self) -> int:
        """Jobs waiting for their turn now."""
        with self._cond:
            return len(self._light) + len(self._heavy)

    def _retry_after(self, ahead: int) -> int:
        return math.ceil(self._job_s * (ahead + 1))

    def close(self, timeout: float = 10.0) -> None:
        """Fail the waiting jobs at once, stop the running one at its next safe point, end the worker.

        Every caller still waiting in :meth:`run` is answered :class:`Busy` (HTTP 503: the app is
        shutting down) now, instead of at its deadline.
        """
        with self._cond:
            self.closing = True
            dropped = [*self._light, *self._heavy]
            self._light.clear()
            self._heavy.clear()
            self._cond.notify_all()
            worker = self._worker
        for job in dropped:
            job.future.set_exception(Busy(_SHUTTING_DOWN, 60))
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def run(self, fn: Callable[[Callable[[], bool]], T], *, heavy: bool, deadline: float) -> T:
        """Queue ``fn(expired)``, wait for its result and return it (or raise its error).

        Raises:
            QueueFull: :attr:`max_queue` jobs already wait.
            TimedOut: ``deadline`` passed before the job finished (the job is dropped if it has not
                started, and stops at its next safe point if it has).
        """
        job = _Job(fn, heavy, deadline, self)
        with self._cond:
            if self.closing:
                raise Busy(_SHUTTING_DOWN, 60)
            ahead = len(self._light) + len(self._heavy)
            if ahead >= self.max_queue:
                raise QueueFull(f"the app is busy: {ahead} jobs are waiting; try again shortly",
                                self._retry_after(ahead))
            (self._heavy if heavy else self._light).append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="convscope-jobs", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        try:
            return job.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (FutureTimeout, TimedOut):
            if self.closing:  # the running job was stopped by close(), not by its deadline
                raise Busy(_SHUTTING_DOWN, 60) from None
            with self._cond:
                job.abandoned = True
                for lane in (self._light, self._heavy):
                    if job in lane:
                        lane.remove(job)
                ahead = len(self._light) + len(self._heavy)
                self.timed_out += 1
            raise TimedOut(_OUT_OF_TIME, self._retry_after(ahead)) from None

    def _next(self) -> _Job:
        # called with the condition held and at least one job waiting
        if self._heavy and (not self._light or self._burst >= LIGHT_BURST):
            self._burst = 0
            return self._heavy.popleft()
        self._burst = self._burst + 1 if self._heavy else 0
        return self._light.popleft()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._light or self._heavy or self.closing):
                    self._cond.wait()
                if self.closing:
                    return
                job = self._next()
            if job.abandoned or job.expired():
                # never start a job whose deadline passed while it waited
                if not job.abandoned:
                    job.future.set_exception(TimedOut(_OUT_OF_TIME, self._retry_after(0)))
                continue
            t0 = time.monotonic()
            try:
                job.future.set_result(job.fn(job.expired))
                self.done += 1
            except BaseException as exc:  # handed to the waiting request
                job.future.set_exception(exc)
            del job  # hold nothing of a finished job while waiting for the next
            now = time.monotonic()
            self._job_s = 0.8 * self._job_s + 0.2 * (now - t0)
            # Hand freed heap pages back to the system: glibc keeps them otherwise, in one arena
            # per thread that ever allocated, and the process only grows. A trim after a large
            # job takes tens of ms, so it runs when the queue is empty, or once a second at most.
            if not self.waiting or now - self._trimmed > 1.0:
                self._trim()
                self._trimmed = time.monotonic()


@contextmanager
def stop_after(model: torch.nn.Module, expired: Callable[[], bool]) -> Iterator[None]:
    """Raise :class:`TimedOut` at the first forward pass of ``model`` that starts once ``expired()``.

    A forward pass is a safe point: :func:`~convscope.explain` and :func:`~convscope.capture` undo
    their hooks and state flips when an error passes through them. The hook itself is registered
    by :func:`convscope.core.hooks.stop_forward_when`.
    """
    from convscope.core.hooks import stop_forward_when

    with stop_forward_when(model, expired, lambda: TimedOut(_OUT_OF_TIME, 1)):
        yield
