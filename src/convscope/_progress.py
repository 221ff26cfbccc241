"""Progress that reaches the user on a terminal and off it.

``Progress(desc, total)`` draws a tqdm bar when stderr is a terminal and otherwise prints one
line per ``every`` seconds (and at the end) to stderr, so a CI log or a notebook's captured stderr
shows how far a long job is. ``enabled=False`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """A progress reporter: ``update(done)`` with an absolute count, ``close()`` at the end.

    Args:
        desc: what is counted ("maps", "classes").
        total: the count at the end.
        enabled: ``None``: on (a bar on a terminal, lines elsewhere); ``False``: silent.
        every: seconds between lines off a terminal.
        unit: the counted thing, for the lines.
    """

    def __init__(self, desc: str, total: int, *, enabled: bool | None = None, every: float = 10.0,
                 unit: str = "") -> None:
        self.desc = desc
        self.total = int(total)
        self.on = enabled is not False
        self.every = every
        self.unit = unit
        self.done = 0
        self._bar: Any = None
        self._last = time.monotonic()
        self._t0 = self._last
        self._printed = -1
        if self.on and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit or "it", leave=False)

    def update(self, done: int) -> None:
        """Set the count to ``done``."""
        if not self.on:
            return
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if now - self._last >= self.every or (done >= self.total and self._printed != done):
            self._line(now)

    def _line(self, now: float) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        unit = f" {self.unit}" if self.unit else ""
        print(f"convscope: {self.desc}: {self.done}/{self.total}{unit} ({pct:.0f}%, "
              f"{now - self._t0:.0f} s)", file=sys.stderr, flush=True)
        self._last = now
        self._printed = self.done

    def close(self) -> None:
        """Finish the bar (or the last line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
