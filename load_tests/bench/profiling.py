"""Sampling a server with py-spy while a benchmark measures it: where each of its processes spends its time.

A throughput figure says that a server stops; on a machine lent for minutes (a GPU host) there is no second look,
so the benchmark records the reason at the same time: py-spy samples the server and every process below it
(`--subprocesses`), each thread apart (`--threads`), without pausing them (`--nonblocking`), into py-spy's raw
format (one line per distinct stack: `process PID:"command";thread (ID);frame;...;frame COUNT`). `summarize`
turns that into each process's busiest innermost frames.

py-spy needs to trace the processes (ptrace); where it is missing or may not attach, the measurement goes on and
the reason is written where the samples would have been.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

SAMPLES_PER_SECOND = 200
_SAMPLE_START = re.compile(r"\n(?=process \d+:)")
_PROCESS = re.compile(r"(?:^|;)process (\d+):")


def py_spy() -> str | None:
    """py-spy beside this interpreter (a venv's own), else on PATH; None when neither has it."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


@contextmanager
def sampled(pid: int, seconds: float, path: Path) -> Iterator[None]:
    """Sample process `pid` and its children for about `seconds` into `path` while the body runs; when py-spy is
    missing or fails, write why into `path` with the suffix .err instead."""
    executable = py_spy()
    if executable is None:
        path.with_suffix(".err").write_text("py-spy is not installed (pip install py-spy)\n")
        yield
        return
    command = [executable, "record", "--nonblocking", "--subprocesses", "--threads", "--format", "raw"]
    command += ["--rate", str(SAMPLES_PER_SECOND), "--duration", str(max(1, round(seconds)))]
    process = subprocess.Popen(
        [*command, "--pid", str(pid), "--output", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield
    finally:
        try:
            output, _ = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        if process.returncode != 0 or not path.is_file():
            path.with_suffix(".err").write_bytes(output)


def summarize(path: Path, roles: Mapping[int, str], top: int = 12) -> str:
    """Each sampled process's share of samples by thread and its `top` innermost frames, as text; `roles` names
    processes by pid (the rest are shown by pid)."""
    by_process: dict[int, Counter[str]] = defaultdict(Counter)
    threads: dict[int, Counter[str]] = defaultdict(Counter)
    # A process frame quotes its command line, which may hold newlines and semicolons: a sample starts at a line
    # that starts with a process frame, and its thread frame (from --threads) ends the process frames.
    for sample in _SAMPLE_START.split(path.read_text(errors="replace")):
        owners, marker, rest = sample.rpartition(";thread (")
        stack, _, count = rest.split("\n", 1)[0].strip().rpartition(" ")  # no code frame holds a newline
        processes = _PROCESS.findall(owners)
        if not marker or not processes or not count.isdigit():
            continue
        thread, _, code = ("thread (" + stack).partition(";")
        frames = code.split(";") if code else []
        by_process[int(processes[-1])][frames[-1] if frames else "(no Python frame)"] += int(count)
        threads[int(processes[-1])][thread] += int(count)
    lines = []
    for pid, frames in sorted(by_process.items(), key=lambda item: -sum(item[1].values())):
        total = sum(frames.values())
        shares = ", ".join(f"{name} {count / total:.0%}" for name, count in threads[pid].most_common(4))
        lines.append(f"{roles.get(pid, f'pid {pid}')}: {total} samples ({shares})")
        lines += [f"  {count / total:6.1%}  {frame}" for frame, count in frames.most_common(top)]
    return "\n".join(lines) + "\n"
