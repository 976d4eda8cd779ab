"""Every serving process freezes what it made while starting and collects young garbage less often (server/heap.py),
read from the real processes of a running server through load_tests.bench.loop_census's hook, which reports each
process's collector on SIGUSR2."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.bench._cpu import descendants
from load_tests.bench.h2load_compare import process_roles
from load_tests.bench.loop_census import census_environment, snapshot
from tests.servers import ServerProcess, running_server, wait_until


def serving_processes(server: ServerProcess) -> list[int]:
    """The processes that serve: the server itself, or, under a supervisor, its engine and front-ends."""
    pids = [server.pid, *descendants(server.pid)]
    roles = process_roles(server.pid, server.log(), pids)
    return [pid for pid in pids if roles[pid] not in ("supervisor", "other")]


def collectors(pids: list[int], folder: Path) -> list[dict]:
    return [census["gc"] for census in snapshot(pids, folder).values()]


@pytest.mark.parametrize("frontends", ["0", "2"], ids=["one-process", "two-front-ends"])
def test_every_serving_process_freezes_its_start_and_collects_young_garbage_every_7000_allocations(
    model_repository: Path, tmp_path: Path, frontends: str
) -> None:
    report = tmp_path / "census"
    report.mkdir()
    env = census_environment(report)
    with running_server(model_repository, "--frontends", frontends, workdir=tmp_path, env=env) as server:
        processes = serving_processes(server)
        assert len(processes) == (1 if frontends == "0" else 3)
        wait_until(
            lambda: all(collector["frozen"] > 0 for collector in collectors(processes, report)),
            "every serving process has settled its heap",
        )
        for collector in collectors(processes, report):
            assert collector["threshold"][0] == 7000
            assert collector["frozen"] > 10_000, collector


def test_a_threshold_of_0_leaves_the_collector_as_python_sets_it(model_repository: Path, tmp_path: Path) -> None:
    report = tmp_path / "census"
    report.mkdir()
    flags = ("--frontends", "0", "--gc-young-threshold", "0")
    with running_server(model_repository, *flags, workdir=tmp_path, env=census_environment(report)) as server:
        (collector,) = collectors([server.pid], report)
    assert collector["threshold"] == list(gc.get_threshold()), "as in this process, which changed nothing"
    assert collector["frozen"] == 0


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
