"""The check's time budget and its progress lines, shared by both stages (the wall clock crosses `exec`).

Every step asks `allows(seconds)` before it starts; when the answer is no it is recorded as skipped, so a slow
machine gets a shorter report rather than a run cut off by its caller's time limit. Standard library only.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

REPORT_RESERVE_SECONDS = 15.0
"""Kept back for writing the report and plots, whatever the measurements would still like."""


@dataclass(frozen=True)
class Budget:
    started_at: float
    """time.time() when the check started (before installing)."""
    deadline: float
    """time.time() by which everything, the report included, must be done."""

    @classmethod
    def starting_now(cls, seconds: float) -> Budget:
        now = time.time()
        return cls(now, now + seconds)

    def elapsed(self) -> float:
        return time.time() - self.started_at

    def left(self) -> float:
        """Seconds left for measuring (the report's reserve already taken off)."""
        return self.deadline - REPORT_RESERVE_SECONDS - time.time()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds

    def say(self, message: str) -> None:
        """A progress line on stderr: elapsed time, time left, message."""
        elapsed = int(self.elapsed())
        left = max(int(self.deadline - time.time()), 0)
        sys.stderr.write(f"[gpu-check {elapsed // 60:02d}:{elapsed % 60:02d}, {left:3d} s left] {message}\n")
        sys.stderr.flush()
