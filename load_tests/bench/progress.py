"""A progress display for a long benchmark: one line per finished step, with elapsed time and time left.

Time left is the remaining planned work scaled by how fast the planned work has gone so far, so a machine slower
than the plan assumed shows a longer, not a wrong, estimate.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(int(seconds), 0), 60)
    return f"{minutes:02d}:{secs:02d}"


class Progress:
    def __init__(self, planned_seconds: float, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._planned = max(planned_seconds, 1e-3)
        self._done = 0.0
        self._started = time.monotonic()
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled

    def step(self, planned_seconds: float, message: str) -> None:
        """Record a finished step that was planned to take `planned_seconds`, and show `message`."""
        self._done = min(self._done + planned_seconds, self._planned)
        self.note(message)

    def note(self, message: str) -> None:
        """Show `message` without counting any work as done."""
        if not self._enabled:
            return
        elapsed = time.monotonic() - self._started
        fraction = self._done / self._planned
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else self._planned
        self._stream.write(f"[{fraction:4.0%} {_clock(elapsed)} elapsed, ~{_clock(left)} left] {message}\n")
        self._stream.flush()
