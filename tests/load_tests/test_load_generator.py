"""What the benchmarks' own instruments count: the Python load generator's connections against a server of several
processes sharing one port, and the CPU of a server of several processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from load_tests.bench._cpu import process_cpu_seconds, process_tree_cpu_seconds, tree_cpu
from tests.load_tests.runs import run_script

# In a process of its own (run_script). The generator's workers are spawned, so the script needs no `__main__`
# guard of its own.
_SPREAD_OVER_TWO_PROCESSES = """
import json, sys, time
from pathlib import Path
from load_tests.bench import h2load
from load_tests.bench.h2load_compare import running_bare_server
from load_tests.bench.loadgen import LoadGenerator, LoadPlan

request = h2load.infer_request("mnist_net", "input").SerializeToString()
with running_bare_server(Path(sys.argv[1]), processes=2) as server, LoadGenerator(1) as generator:
    start = time.monotonic() + 0.3
    plan = LoadPlan(server.target, h2load.MODEL_INFER_PATH, request, start, start, start + 0.6,
                    connections_per_process=16)
    result = generator.start(plan, callers=16).wait()
    per_process = [h2load.success_count(target, "mnist_net") for target in server.stats_targets]
print(json.dumps({"answered": len(result.latencies), "errors": dict(result.errors), "per_process": per_process}))
"""


def test_connections_spread_the_callers_over_every_process_sharing_the_port(tmp_path: Path) -> None:
    """16 callers over 16 connections reach both processes of a 2-process server (one connection reaches one)."""
    result = run_script(_SPREAD_OVER_TWO_PROCESSES, str(tmp_path / "bare.log"))
    assert result["answered"] > 0 and result["errors"] == {}
    assert len(result["per_process"]) == 2 and all(count > 0 for count in result["per_process"]), result


_PARENT_WAITING_ON_A_BUSY_CHILD = """
import subprocess, sys
busy = "import time\\nend = time.monotonic() + 1.5\\nwhile time.monotonic() < end: pass"
subprocess.run([sys.executable, "-c", busy], check=True)
"""


def test_a_server_of_several_processes_counts_the_cpu_of_all_of_them() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT_WAITING_ON_A_BUSY_CHILD])
    try:
        time.sleep(1.0)
        readings = tree_cpu(parent.pid)
        whole, alone = process_tree_cpu_seconds(parent.pid), process_cpu_seconds(parent.pid)
    finally:
        parent.wait(timeout=30)
    assert len(readings) == 2 and parent.pid in readings, "the parent and its child"
    child = next(reading for pid, reading in readings.items() if pid != parent.pid)
    assert child.process >= 0.3 and child.main_thread >= 0.3, "the child spins on its main thread"
    assert whole >= alone + 0.3
