"""The progress display of `maskflow batch`."""
from __future__ import annotations

import sys
import time

BAR_WIDTH = 24
# Seconds between redraws: a terminal line is overwritten in place, a log gets a new line.
REDRAW_TTY, REDRAW_LOG = 0.1, 2.0


class Progress:
    """A one-line progress bar on stderr (plain periodic lines when stderr is not a terminal)."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.every = REDRAW_TTY if self.tty else REDRAW_LOG
        self.last_draw = 0.0
        self.done = self.failed = 0
        self.base = 0  # items already settled when the bar started: not part of the rate
        self.drawn: tuple[int, int] | None = None

    def update(self, done: int, failed: int = 0, force: bool = False) -> None:
        self.done, self.failed = done, failed
        now = time.monotonic()
        if self.drawn == (done, failed) or (not force and now - self.last_draw < self.every
                                            and done < self.total):
            return
        self.last_draw, self.drawn = now, (done, failed)
        line = self._line(done, failed, now)
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        self.update(self.done, self.failed, force=True)
        if self.tty and self.drawn is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _line(self, done: int, failed: int, now: float) -> str:
        elapsed = max(now - self.start, 1e-3)
        rate = (done - self.base) / elapsed
        eta = f"{(self.total - done) / rate:.0f}s" if 0 < rate and done < self.total else "-"
        fill = int(BAR_WIDTH * done / self.total) if self.total else BAR_WIDTH
        bar = "#" * fill + "." * (BAR_WIDTH - fill)
        return (f"{self.label:<10} [{bar}] {done}/{self.total}"
                + (f" failed {failed}" if failed else "") + f"  {rate:.1f}/s  ETA {eta}")
