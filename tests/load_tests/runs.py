"""Running a benchmark from a test as its users run it."""

from __future__ import annotations

import subprocess
import sys


def run_module(module: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m module arguments` in a process of its own, its output captured. Benchmarks run apart from the
    test process: the generated `inference` modules they import clash with tritonclient's."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )
