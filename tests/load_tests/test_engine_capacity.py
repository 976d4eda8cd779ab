"""`python -m load_tests.bench.engine_capacity`: one engine fed by processes that stand in for front-ends.

Speed is not asserted (the machine is shared); what is checked is the report's arithmetic and that a real run
feeds a real engine through the front-end's own client, with nothing failed, and writes its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.bench.engine_capacity import Round, report
from tests.load_tests.runs import run_benchmark


def measured(round_index: int, answers: float, loop_us: float) -> Round:
    return Round(
        round=round_index,
        feeders=1,
        in_flight=64,
        one_per_message=False,
        answers_per_second=answers,
        engine_cpu_us_per_answer=2 * loop_us,
        engine_loop_busy=answers * loop_us / 1e6,
        engine_loop_us_per_answer=loop_us,
        feeder_cpu_us_per_answer=20.0,
        average_batch=32.0,
        failures=0,
    )


def test_the_report_gives_medians_and_the_loops_ceiling() -> None:
    """The loop's ceiling is one core-second over its median CPU per answer: 50 µs gives 20,000 answers/s."""
    table = report([measured(0, 8000, 40.0), measured(1, 10000, 50.0), measured(2, 12000, 60.0)])
    assert "1 feeder(s) x 64 in flight, requests sent together; medians of 3 round(s)" in table
    assert "| 10,000 | 100 µs | 0.50 | 50 µs | 20,000 | 20 µs | 32.0 |" in table


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_feeds_a_real_engine_and_writes_every_round(model_repository: Path, tmp_path: Path) -> None:
    """Fed one request per message, as gRPC front-ends send them (the other way differs only in not waiting)."""
    printed, rounds = run_benchmark(
        "load_tests.bench.engine_capacity",
        *("--model-repository", str(model_repository), "--in-flight", "8", "--duration", "1.5", "--rounds", "2"),
        "--one-per-message",
        figures=tmp_path / "capacity.json",
        timeout=220,
    )
    assert "round 2:" in printed and "| answers/s |" in printed
    assert "8 in flight, one request per message" in printed
    assert [each["round"] for each in rounds] == [0, 1]
    for each in rounds:
        assert each["answers_per_second"] > 0 and each["failures"] == 0 and each["one_per_message"]
        # Eight callers make batches of one to eight (the histogram's sum and count are read while batches run,
        # so they may be a batch apart).
        assert 1.0 <= each["average_batch"] <= 8.5
        assert 0.0 < each["engine_loop_busy"] < 1.5
