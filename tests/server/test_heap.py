"""Every serving process freezes what it made while starting and collects young garbage less often (server/heap.py),
read from the real processes of a running server through a test hook (tests/server/hooks/sitecustomize.py)."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.servers import running_server, wait_until, with_process_hooks


def collector_states(pids: list[int], folder: Path) -> dict[int, dict]:
    """Each process's collector as the hook reports it on SIGUSR2."""
    for pid in pids:
        (folder / f"{pid}.json").unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR2)
    wait_until(lambda: all((folder / f"{pid}.json").exists() for pid in pids), "every process reported", timeout=10)
    return {pid: json.loads((folder / f"{pid}.json").read_text()) for pid in pids}


def serving_processes(server_pid: int) -> list[int]:
    """The processes that serve: the server itself, or, under a supervisor, its engine and front-ends."""
    children = [
        child.pid
        for child in psutil.Process(server_pid).children()
        if "resource_tracker" not in " ".join(child.cmdline())
    ]
    return children or [server_pid]


@pytest.mark.parametrize("frontends", ["0", "2"], ids=["one-process", "two-front-ends"])
def test_every_serving_process_freezes_its_start_and_collects_young_garbage_every_7000_allocations(
    model_repository: Path, tmp_path: Path, frontends: str
) -> None:
    report = tmp_path / "gc"
    report.mkdir()
    env = with_process_hooks(CNNSERVE_TEST_GC_REPORT=str(report))
    with running_server(model_repository, "--frontends", frontends, workdir=tmp_path, env=env) as server:
        processes = serving_processes(server.pid)
        assert len(processes) == (1 if frontends == "0" else 3)
        wait_until(
            lambda: all(state["frozen"] > 0 for state in collector_states(processes, report).values()),
            "every serving process has settled its heap",
        )
        for state in collector_states(processes, report).values():
            assert state["threshold"][0] == 7000
            assert state["frozen"] > 10_000, state


def test_a_threshold_of_0_leaves_the_collector_as_python_sets_it(model_repository: Path, tmp_path: Path) -> None:
    report = tmp_path / "gc"
    report.mkdir()
    env = with_process_hooks(CNNSERVE_TEST_GC_REPORT=str(report))
    flags = ("--frontends", "0", "--gc-young-threshold", "0")
    with running_server(model_repository, *flags, workdir=tmp_path, env=env) as server:
        (state,) = collector_states([server.pid], report).values()
    assert state == {"threshold": list(gc.get_threshold()), "frozen": 0}, "as in this process, which changed nothing"


def test_settling_collects_the_garbage_of_the_start_before_freezing_the_rest() -> None:
    """Run in a fresh interpreter: garbage made while starting is freed, not frozen with what stays alive."""
    program = """
import gc, weakref
from cnnserve.server.heap import settle_heap

class Node:
    pass

kept, dropped = Node(), Node()
dropped.self = dropped
alive, gone = weakref.ref(kept), weakref.ref(dropped)
del dropped
settle_heap(5000)
print(gc.get_threshold()[0], gc.get_freeze_count() > 0, alive() is not None, gone() is None)
"""
    answer = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert answer.stdout.split() == ["5000", "True", "True", "True"]
