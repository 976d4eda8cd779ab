"""Running a benchmark from a test as its users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_module(module: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m module arguments` in a process of its own, its output captured. Benchmarks run apart from the
    test process: the generated `inference` modules they import clash with tritonclient's."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_benchmark(module: str, *arguments: str, figures: Path, timeout: float) -> tuple[str, Any]:
    """`run_module` with `--json figures`, which must succeed; returns what it printed and the figures it wrote."""
    completed = run_module(module, *arguments, "--json", str(figures), timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout, json.loads(figures.read_text())


def run_script(script: str, *arguments: str, timeout: float = 60) -> Any:
    """`python -c script arguments` in a process of its own (see run_module), which must succeed and print JSON
    on its last line; returns that JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])
