"""CPU time of one process and of the whole machine.

Every benchmark point reports who used the cores: the server, the load generator and the machine as a whole (the
difference is everything else running on it). Readings come from psutil when it is installed, else from /proc.
"""

from __future__ import annotations

import os
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
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    return _stat_cpu_seconds(stat)


def thread_cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User plus system CPU seconds used so far by one thread of process `pid` (by default its main thread: the
    event loop of an asyncio server). NaN when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/task/{thread or pid}/stat").read_text()
    except OSError:
        return float("nan")
    return _stat_cpu_seconds(stat)


def _stat_cpu_seconds(stat: str) -> float:
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
