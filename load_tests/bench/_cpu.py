"""CPU time of one process and of the whole machine.

Every benchmark point reports who used the cores: the server, the load generator and the machine as a whole (the
difference is everything else running on it). Readings come from psutil when it is installed, else from /proc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with locust, so it is normally there
    psutil = None

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process `pid` (all its threads, not its children).

    Returns NaN when the process is gone, so a point taken while the server died shows as missing, not zero.
    """
    if psutil is not None:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return float("nan")
        return times.user + times.system
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def process_tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by process `pid` and every process below it that is still
    running: a server of several processes (a supervisor, its gRPC front-ends and its engine) counts whole.

    A child that exited between two readings takes its seconds with it, so a difference spanning a restart
    undercounts; NaN when `pid` itself is gone.
    """
    readings = tree_cpu(pid)
    return sum(reading.process for reading in readings.values()) if pid in readings else float("nan")


def descendants(pid: int) -> list[int]:
    """The pids of every process below `pid` that is running now (children, their children, ...)."""
    if psutil is not None:
        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []
    found, waiting = [], [pid]
    while waiting:
        parent = waiting.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(child) for child in task.read_text().split()]
            except OSError:
                continue
            found += children
            waiting += children
    return found


@dataclass(frozen=True)
class ProcessCpu:
    """CPU seconds so far of one process: all its threads, and its main thread (an asyncio server's loop)."""

    process: float
    main_thread: float


def tree_cpu(pid: int) -> dict[int, ProcessCpu]:
    """ProcessCpu of `pid` and of every process below it, by pid (those that ended meanwhile are left out)."""
    found = {}
    for each in (pid, *descendants(pid)):
        reading = ProcessCpu(process_cpu_seconds(each), thread_cpu_seconds(each))
        if reading.process == reading.process:  # not NaN
            found[each] = reading
    return found


def thread_cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User plus system CPU seconds used so far by one thread of process `pid` (by default its main thread: the
    event loop of an asyncio server). NaN when it is gone."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{thread or pid}/stat"))


def _stat_cpu_seconds(stat_file: Path) -> float:
    """User plus system seconds from a /proc `stat` file of a process or thread; NaN when it is gone."""
    try:
        stat = stat_file.read_text()
    except OSError:
        return float("nan")
    # The command name (field 2) may contain spaces; fields after the closing parenthesis are space-separated.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_SECOND


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent not idle so far, summed over cores."""
    if psutil is not None:
        times = psutil.cpu_times()
        fields = ("user", "nice", "system", "irq", "softirq", "steal")
        return sum(getattr(times, field, 0.0) for field in fields)
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    values = [int(v) for v in first[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / _TICKS_PER_SECOND


def cpu_count() -> int:
    """Logical CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
