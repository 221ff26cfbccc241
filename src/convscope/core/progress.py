"""Progress that reaches the user on a terminal and off it, one bar per job.

``Progress(desc, total)`` draws a tqdm bar when stderr is a terminal and otherwise prints one
line per ``every`` seconds (and at the end) to stderr, so a CI log or a notebook's captured stderr
shows how far a long job is. ``enabled=False`` prints nothing. ``tty_only=True`` makes
``enabled=None`` mean "a bar on a terminal, nothing elsewhere": the default of the per-call
loops (a perturbation run's chunks, an optimisation's steps, a sanity check's layers).

Nesting gives one bar per job. An open Progress is the active one of its context (a
:mod:`contextvars` variable, so each thread and asyncio task has its own). A Progress made while
another is active draws no bar and prints no line of its own: it shows as a sub-status of the
outermost one (``report: methods 3/9 · occlusion 40/120``), whose off-terminal lines stay periodic,
so their number is bounded by the job's length, not by how many inner loops it runs. Under a silent
Progress an inner one is silent too, unless asked for with ``enabled=True``.

:class:`Track` gives tqdm's shape for loops: iterate it, or ``update(n)`` by increments.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

__all__ = ["EVERY", "Progress", "Track", "current"]

EVERY = 10.0
"""Default seconds between progress lines off a terminal."""
_REDRAW = 0.2  # seconds between redraws of a bar for its inner jobs' sub-status

_T = TypeVar("_T")
_OPEN: ContextVar[tuple[weakref.ref[Progress], ...]] = ContextVar("convscope_progress", default=())


def current() -> Progress | None:
    """The innermost open :class:`Progress` of this context (``None``: no job is reporting)."""
    for ref in reversed(_OPEN.get()):
        p = ref()
        if p is not None and not p.closed:
            return p
    return None


def _tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """A progress reporter: ``update(done)`` with an absolute count, ``close()`` at the end.

    Args:
        desc: what is counted ("maps", "classes").
        total: the count at the end.
        enabled: ``None``: on (a bar on a terminal, lines elsewhere; see ``tty_only``), or, inside
            an active Progress, its sub-status; ``True``: on; ``False``: silent.
        every: seconds between lines off a terminal (default :data:`EVERY`).
        unit: the counted thing, for the lines.
        tty_only: with ``enabled=None`` and no active Progress, show a bar on a terminal and
            nothing elsewhere.
        delay: draw the terminal bar only once the job has run this many seconds (a quick job
            leaves no bar behind).

    Attributes:
        on: whether this Progress reports (itself, or through the outer one).
        done: the count so far.
        note: the status shown after the count (:meth:`status`).
        closed: whether :meth:`close` ran.
    """

    def __init__(self, desc: str, total: int, *, enabled: bool | None = None, every: float | None = None,
                 unit: str = "", tty_only: bool = False, delay: float = 0.0) -> None:
        self.desc = desc
        self.total = int(total)
        self.every = EVERY if every is None else every
        self.unit = unit
        self.done = 0
        self.note = ""
        self.closed = False
        self._bar: Any = None
        self._root: Progress | None = None  # the outermost Progress, which this one reports to
        self._inner: list[Progress] = []  # on an outermost one: its open inner ones, in order
        self._last = self._drawn = self._t0 = time.monotonic()
        self._printed = -1
        outer = current()
        if outer is not None and outer.on and enabled is not False:
            self.on = True
            self._root = outer._root or outer
            self._root._inner.append(self)
        elif outer is not None and not outer.on and enabled is not True:
            self.on = False
        else:
            tty = _tty()
            self.on = enabled is True or (enabled is None and (tty or not tty_only))
            if self.on and tty:
                from tqdm import tqdm

                self._bar = tqdm(total=self.total, desc=desc, unit=unit or "it", leave=False, delay=delay)
        _OPEN.set(_OPEN.get() + (weakref.ref(self),))

    def update(self, done: int) -> None:
        """Set the count to ``done``."""
        if not self.on or self.closed:
            return
        self.done = done
        if self._root is not None:
            self._root._redraw()
        elif self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=False)
            self._bar.update(done - self._bar.n)
        else:
            now = time.monotonic()
            if now - self._last >= self.every or (done >= self.total and self._printed != done):
                self._line(now)

    @property
    def inner(self) -> tuple[Progress, ...]:
        """The open Progress objects reporting to this outermost one, outermost first (what a
        web page polling a job reads from another thread)."""
        return tuple(self._inner)

    def advance(self, n: int = 1) -> None:
        """Add ``n`` to the count."""
        self.update(self.done + n)

    def status(self, text: str) -> None:
        """Show ``text`` after the count (e.g. the item in progress)."""
        self.note = text
        if self.on and not self.closed:
            (self._root or self)._redraw()

    def _label(self) -> str:
        count = f" {self.done}/{self.total}" if self.total > 1 else ""  # a one-step job: its name
        return f"{self.desc}{count}" + (f": {self.note}" if self.note else "")

    def _status(self) -> str:
        return " · ".join(s for s in [self.note] + [p._label() for p in self._inner] if s)

    def _redraw(self) -> None:
        """Show a changed status: redraw the bar now and then, or print the line when due."""
        now = time.monotonic()
        if self._bar is not None:
            if now - self._drawn >= _REDRAW:
                self._bar.set_postfix_str(self._status())
                self._drawn = now
        elif self.on and now - self._last >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        unit = f" {self.unit}" if self.unit else ""
        status = self._status()
        print(f"convscope: {self.desc}: {self.done}/{self.total}{unit} ({pct:.0f}%, "
              f"{now - self._t0:.0f} s)" + (f" · {status}" if status else ""), file=sys.stderr, flush=True)
        self._last = now
        self._printed = self.done

    def close(self) -> None:
        """Finish the bar (or the last line) and stop being the active Progress."""
        if self.closed:
            return
        self.closed = True
        if self._root is not None and self in self._root._inner:
            self._root._inner.remove(self)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _OPEN.set(tuple(r for r in _OPEN.get() if (p := r()) is not None and p is not self and not p.closed))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Track(Generic[_T]):
    """tqdm's shape over a :class:`Progress`: ``for x in Track(items, desc)`` counts the items and
    closes at the end; or ``update(n)`` by increments and ``close()``.

    Args:
        items: what to iterate (optional with ``total``).
        desc: the label.
        total: the count at the end (default ``len(items)``).
        label: ``label(item)``, shown as the status while the item is in progress.
        **options: ``enabled``, ``every``, ``unit``, ``tty_only`` of :class:`Progress`.
    """

    def __init__(self, items: Iterable[_T] | None = None, desc: str = "", *, total: int | None = None,
                 label: Callable[[_T], str] | None = None, **options: Any) -> None:
        self.items = items
        self.label = label
        if total is None:
            total = len(items)  # type: ignore[arg-type]
        self.progress = Progress(desc, total, **options)

    def __iter__(self) -> Iterator[_T]:
        p = self.progress
        try:
            for item in () if self.items is None else self.items:
                if self.label is not None:
                    p.status(self.label(item))
                yield item
                p.advance()
        finally:
            p.close()

    def update(self, n: int = 1) -> None:
        """Add ``n`` to the count (tqdm's ``update``)."""
        self.progress.advance(n)

    def close(self) -> None:
        """Finish (tqdm's ``close``)."""
        self.progress.close()

    def __enter__(self) -> Track[_T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
