"""`python -m load_tests.bench.h2load_compare`, briefly: h2load (C) against cnnserve and a bare grpc.aio server.

Speed is not asserted (the machine is shared); what is checked is that both servers answered, that the
successes each server counted itself are the calls h2load saw answered, and that a bare server of several
processes sharing one port is counted over all of them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.bench import h2load_compare
from load_tests.bench.h2load import INSTALL_HINT, H2loadSummary, Measurement, grpc_frame, parse_summary
from load_tests.bench.h2load_compare import BareMeasurement, Row, Sweep, report, row_report
from tests.load_tests.runs import run_benchmark, run_script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason=f"h2load is not installed: {INSTALL_HINT}")


def test_grpc_frame_is_flag_length_and_message() -> None:
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_parse_summary_reads_succeeded_and_rate() -> None:
    summary = parse_summary(
        "finished in 3.00s, 2255.00 req/s, 1.01MB/s\n"
        "requests: 6765 total, 6829 started, 6765 done, 6760 succeeded, 5 failed, 5 errored, 0 timeout\n"
    )
    assert (summary.succeeded, summary.failed, summary.seconds, summary.requests_per_second) == (6760, 5, 3.0, 2255.0)


def _measured(successes: int, average_batch: float | None = None) -> Measurement:
    return Measurement(H2loadSummary(successes, 0, 1.0, float(successes)), successes, average_batch)


def test_sweep_table_relates_each_count_to_the_single_process_and_to_bare() -> None:
    sweep = Sweep(
        in_flight=64,
        connections=16,
        seconds=1.0,
        rows=(
            Row(0, _measured(1000, 6.0), BareMeasurement(_measured(2500), (2500,))),
            Row(2, _measured(2200, 8.5), BareMeasurement(_measured(4000), (2100, 1900))),
        ),
    )
    assert [sweep.relative_to_single_process(row) for row in sweep.rows] == [1.0, 2.2]
    assert [row.processes for row in sweep.rows] == [1, 2]
    assert sweep.rows[1].ratio == pytest.approx(0.55)

    text = report(sweep)
    assert "| 0 (single process) | 1,000 | 6.0 | 2,500 | 1 | 0.40 | 1.00 |" in text
    assert "| 2 | 2,200 | 8.5 | 4,000 | 2 | 0.55 | 2.20 |" in text
    assert "bare successes per process: 2100, 1900" in row_report(sweep.rows[1], 64)
    assert Sweep(64, 16, 1.0, sweep.rows[1:]).to_dict()["rows"][0]["relative_to_single_process"] is None


def test_rounds_are_summarised_by_medians_of_ratios_taken_within_each_round() -> None:
    """The machine drifts between rounds: round 2 runs everything twice as fast, and the ratios still hold."""
    bare = BareMeasurement(_measured(3000), (3000,))
    fast_bare = BareMeasurement(_measured(6000), (6000,))
    sweep = Sweep(
        in_flight=64,
        connections=16,
        seconds=1.0,
        rows=(
            Row(0, _measured(1000, 6.0), bare, round=0),
            Row(2, _measured(1500, 8.0), bare, round=0),
            Row(2, _measured(3000, 9.0), fast_bare, round=1),
            Row(0, _measured(2000, 7.0), fast_bare, round=1),
            Row(0, _measured(1100, 5.0), bare, round=2),
            Row(2, _measured(1650, 10.0), bare, round=2),
        ),
    )
    assert sweep.rounds == 3 and sweep.frontend_counts == [0, 2]
    split = sweep.summary(2)
    assert split.relative_to_single_process == pytest.approx(1.5)
    assert (split.cnnserve, split.average_batch, split.bare) == (1650, 9.0, 3000)
    assert split.ratio == pytest.approx(0.5)
    assert "medians of 3 rounds" in report(sweep)
    figures = sweep.to_dict()
    assert [row["round"] for row in figures["rows"]] == [0, 0, 1, 1, 2, 2]
    assert figures["medians"][1]["relative_to_single_process"] == pytest.approx(1.5)


@pytest.mark.parametrize("frontends", ["0,-1", "1,1", "two"])
def test_front_end_counts_must_be_distinct_non_negative_integers(frontends: str) -> None:
    with pytest.raises(SystemExit) as raised:
        h2load_compare.main(["--frontends", frontends])
    assert raised.value.code == 2


_BARE_TWO_PROCESSES = """
import json, sys
from pathlib import Path
from load_tests.bench.h2load import infer_body
from load_tests.bench.h2load_compare import measure_bare, running_bare_server

with running_bare_server(Path(sys.argv[1]), processes=2) as server:
    result = measure_bare(server, infer_body("mnist_net", "input"), seconds=1.0, in_flight=64, connections=16)
print(json.dumps({"targets": [server.target, *server.stats_targets], "per_process": result.per_process,
                  "counted": result.measurement.server_successes, "seen": result.measurement.h2load.succeeded}))
"""


@needs_h2load
def test_bare_server_of_two_processes_counts_every_call_over_both(tmp_path: Path) -> None:
    result = run_script(_BARE_TWO_PROCESSES, str(tmp_path / "bare.log"))
    assert len(result["per_process"]) == 2 and all(count > 0 for count in result["per_process"])  # 16 connections
    assert result["counted"] == sum(result["per_process"])
    assert result["seen"] > 0 and abs(result["counted"] - result["seen"]) <= 0.03 * result["seen"]
    for target in result["targets"]:  # every process has stopped
        host, port = target.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=2):
            pass


@needs_h2load
def test_the_front_end_sweep_measures_both_servers_and_counts_what_h2load_saw(
    model_repository: Path, tmp_path: Path
) -> None:
    """`cnnserve bench --h2load-frontends 0,2`: one process and two front-ends, each beside a bare server."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnserve",
            "bench",
            *("--h2load-frontends", "0,2", "--h2load-rounds", "2", "--duration", "1", "--output", str(tmp_path)),
            *("--model-repository", str(model_repository), "--cache-dir", str(tmp_path / "cache")),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    assert "ratio cnnserve / bare" in completed.stdout
    assert "| 0 (single process) |" in completed.stdout and "| 2 |" in completed.stdout
    assert "medians of 2 rounds" in completed.stdout
    assert (tmp_path / "h2load.png").read_bytes().startswith(b"\x89PNG")

    result = json.loads((tmp_path / "h2load.json").read_text())
    assert (result["in_flight"], result["connections"], result["rounds"]) == (64, 16, 2)
    single, split, split_again, single_again = result["rows"]
    assert (single["frontends"], single["bare_processes"], split["frontends"], split["bare_processes"]) == (0, 1, 2, 2)
    assert [row["frontends"] for row in (split_again, single_again)] == [2, 0], "the second round runs in reverse"
    for row in (single, split):
        assert row["cnnserve"]["average_batch"] >= 1.0
        assert row["bare_grpc_aio"]["average_batch"] is None
        for side in ("cnnserve", "bare_grpc_aio"):
            assert row[side]["requests_per_second"] > 0
            assert row[side]["h2load"]["failed"] == 0
        counted, seen = row["cnnserve"]["server_successes"], row["cnnserve"]["h2load"]["succeeded"]
        assert seen > 0 and abs(counted - seen) <= 0.03 * seen, "the front-ends' calls are all counted"
        assert sum(row["bare_grpc_aio"]["per_process_successes"]) == row["bare_grpc_aio"]["server_successes"]
    assert single["ratio"] > 0 and single["relative_to_single_process"] == 1.0

    # Where the time went: each request's stages inside cnnserve, and each process's CPU and event loop.
    for row in (single, split):
        stages = row["cnnserve"]["stage_microseconds"]
        assert list(stages) == ["request", "queue", "compute_input", "compute_infer", "compute_output"]
        assert stages["request"] >= max(stages["queue"], stages["compute_infer"]) and stages["compute_infer"] > 0
        assert row["bare_grpc_aio"]["stage_microseconds"] is None
    assert [load["role"] for load in single["cnnserve_processes"]] == ["server"]
    roles = {load["role"] for load in split["cnnserve_processes"]} - {"other"}
    assert roles == {"supervisor", "engine", "front-end 0", "front-end 1"}
    for load in single["cnnserve_processes"] + split["cnnserve_processes"]:
        assert 0 <= load["loop_busy"] <= load["cores"] + 0.05
    working = [load for load in split["cnnserve_processes"] if load["role"] not in ("supervisor", "other")]
    assert len(working) == 3 and all(load["loop_busy"] > 0.05 for load in working), working


@needs_h2load
def test_the_sweep_runs_cnnserve_with_the_server_flags_it_is_given(model_repository: Path, tmp_path: Path) -> None:
    """`--server-flags` reach every cnnserve run of the sweep (here batches of at most 2) and are recorded."""
    output, figures = run_benchmark(
        "load_tests.bench.h2load_compare",
        *("--frontends", "0", "--duration", "1", "--in-flight", "16"),
        *("--server-flags", "--max-batch-size 2 --max-queue-delay-ms 1"),
        *("--model-repository", str(model_repository)),
        figures=tmp_path / "sweep.json",
        timeout=110,
    )
    assert figures["server_flags"] == ["--max-batch-size", "2", "--max-queue-delay-ms", "1"]
    (row,) = figures["rows"]
    assert row["cnnserve"]["server_successes"] > 0
    assert 1.0 <= row["cnnserve"]["average_batch"] <= 2.0
    assert "cnnserve with --max-batch-size 2 --max-queue-delay-ms 1" in output


@needs_h2load
def test_the_await_floor_measures_the_bare_server_answering_at_once_and_awaiting(tmp_path: Path) -> None:
    """`python -m load_tests.bench.await_floor`: both bare servers answer every call h2load sends, round after
    round, and the ratio of the two is reported."""
    output, figures = run_benchmark(
        "load_tests.bench.await_floor",
        *("--rounds", "2", "--duration", "1"),
        figures=tmp_path / "await_floor.json",
        timeout=110,
    )
    assert "round 2: at once" in output and "awaiting / at once: median" in output
    assert len(figures["rounds"]) == 2 and len(figures["ratios"]) == 2
    for measured in figures["rounds"]:
        assert measured["at_once"] > 0 and measured["awaiting"] > 0


@needs_h2load
def test_the_loop_census_times_each_process_callbacks_per_call_beside_the_bare_server(tmp_path: Path) -> None:
    """`python -m load_tests.bench.loop_census`: every process of a server with one front-end, and the bare server,
    runs with the hook; the front-end's handler steps and the engine's reading of Submits are found by name, and the
    figures (the garbage collector's too) are per call that each server answered."""
    output, figures = run_benchmark(
        "load_tests.bench.loop_census",
        *("--frontends", "1", "--duration", "1", "--top", "3"),
        figures=tmp_path / "census.json",
        timeout=110,
    )
    cnnserve, bare = figures
    assert cnnserve["server"] == "cnnserve, 1 front-end(s)" and bare["server"] == "bare grpc.aio"
    assert cnnserve["calls"] > 0 and bare["calls"] > 0
    roles = {process["role"]: process for process in cnnserve["processes"]}
    assert {"supervisor", "engine", "front-end 0"} <= set(roles)

    def callbacks(process: dict) -> dict[str, dict]:
        return {callback["name"]: callback for callback in process["callbacks"]}

    handler_steps = callbacks(roles["front-end 0"])["task:_handle_exceptions"]
    assert handler_steps["per_call"] >= 2 and handler_steps["microseconds_per_call"] > 0
    assert "MessageSocket._read" in callbacks(roles["engine"])
    (bare_process,) = bare["processes"]
    assert callbacks(bare_process)["task:_handle_exceptions"]["per_call"] == pytest.approx(2, abs=0.2)
    assert bare_process["turns_per_call"] > 0 and bare_process["select_microseconds_per_call"] >= 0
    assert "front-end 0 (pid" in output and "bare grpc.aio:" in output
    front_end = roles["front-end 0"]
    assert len(front_end["collections_per_1000_calls"]) == 3 and front_end["collection_microseconds_per_call"] >= 0
    assert front_end["collections_per_1000_calls"][0] < 20, "the young generation is collected as rarely as set"
    assert "garbage collection" in output
