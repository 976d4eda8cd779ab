"""A one-line progress bar for the command line, drawn only on a terminal."""

from __future__ import annotations

import time
from typing import TextIO


class ProgressBar:
    """`[#######.......]  350/1000  35%  120/s` on one line of a terminal, redrawn at most every `min_interval`
    seconds so that thousands of updates cost nothing. `clear()` erases it before other output is written to the
    same terminal; a later `advance()` draws it again.

    On a stream that is not a terminal (a pipe, a file, a CI log) it draws nothing, so redirected output stays
    clean.
    """

    def __init__(self, total: int, stream: TextIO, *, width: int = 30, min_interval: float = 0.1) -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._width = width
        self._min_interval = min_interval
        self._enabled = total > 0 and _is_terminal(stream)
        self._started = time.monotonic()
        self._drawn_at = -float("inf")
        self._shown = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._enabled and (now - self._drawn_at >= self._min_interval or self.done >= self.total):
            self._draw(now)

    def clear(self) -> None:
        """Erase the bar; it comes back at the next update after `min_interval`."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False

    def close(self) -> None:
        self.clear()

    def render(self, now: float | None = None) -> str:
        """The bar's text, for `done` of `total` items."""
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(fraction * self._width)
        elapsed = (time.monotonic() if now is None else now) - self._started
        rate = f"  {self.done / elapsed:.0f}/s" if elapsed > 0 else ""
        digits = len(str(self.total))
        return (
            f"[{'#' * filled}{'.' * (self._width - filled)}] {self.done:>{digits}}/{self.total} {fraction:4.0%}{rate}"
        )

    def _draw(self, now: float) -> None:
        self._stream.write("\r\x1b[K" + self.render(now))
        self._stream.flush()
        self._shown = True
        self._drawn_at = now


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
