"""Sampling a server while it is measured: py-spy over a process and its children, summarized per process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from load_tests.bench.profiling import py_spy, sampled, summarize

_WAITING_ON_A_BUSY_CHILD = """
import subprocess, sys
busy = "import time\\nend = time.monotonic() + 2.5\\nwhile time.monotonic() < end: sum(range(100))"
subprocess.run([sys.executable, "-c", busy], check=True)
"""


def test_each_process_gets_its_threads_shares_and_busiest_frames(tmp_path: Path) -> None:
    raw = tmp_path / "samples.txt"
    raw.write_text(
        'process 10:"python -m cnnserve serve";process 11:"python -c spawn";thread (0x1);run (loop.py:1);'
        "handle (engine.py:5) 30\n"
        'process 10:"python -m cnnserve serve";process 11:"python -c spawn";thread (0x2);infer (model.py:9) 10\n'
        'process 10:"python -m cnnserve serve";thread (0x3);wait (supervisor.py:2) 4\n'
        "a line that is no sample\n"
    )
    summary = summarize(raw, {10: "supervisor", 11: "engine"}).splitlines()
    assert summary[0] == "engine: 40 samples (thread (0x1) 75%, thread (0x2) 25%)"
    assert summary[1:3] == ["   75.0%  handle (engine.py:5)", "   25.0%  infer (model.py:9)"]
    assert summary[3:] == ["supervisor: 4 samples (thread (0x3) 100%)", "  100.0%  wait (supervisor.py:2)"]


@pytest.mark.skipif(py_spy() is None, reason="py-spy is not installed (the load extra has it)")
def test_a_server_and_the_processes_below_it_are_sampled(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _WAITING_ON_A_BUSY_CHILD])
    samples = tmp_path / "server.txt"
    try:
        time.sleep(0.5)
        with sampled(parent.pid, 1.0, samples):
            time.sleep(1.0)
    finally:
        parent.wait(timeout=30)
    error = samples.with_suffix(".err")
    if error.exists() and ("not permitted" in error.read_text() or "Permission denied" in error.read_text()):
        pytest.skip(f"this machine does not let py-spy trace processes: {error.read_text()[-300:]}")
    assert not error.exists(), error.read_text()
    summary = summarize(samples, {parent.pid: "server"})
    busy_child = next(line for line in summary.splitlines() if line.startswith("pid "))
    assert int(busy_child.split()[2]) >= 50, summary  # about 200 samples a second while it spins
    assert "<module> (<string>:3)" in summary
