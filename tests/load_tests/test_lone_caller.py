"""`python -m load_tests.bench.lone_caller`: one caller's latency, one process against front-ends.

Speed is not asserted (the machine is shared); what is checked is that ratios are taken within each round (the
machine drifts between rounds) and that a real run measures every server and writes its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.bench.lone_caller import Latency, report, summarise
from tests.load_tests.runs import run_benchmark


def test_ratios_to_the_single_process_are_taken_within_each_round() -> None:
    """Round 2 runs everything twice as slow; the split's ratios still come out as 1.2 (p50) and 0.9 (p99)."""
    measured = [
        Latency(0, 0, p50_ms=1.0, p99_ms=2.0, calls=100),
        Latency(2, 0, p50_ms=1.2, p99_ms=1.8, calls=100),
        Latency(2, 1, p50_ms=2.4, p99_ms=3.6, calls=100),
        Latency(0, 1, p50_ms=2.0, p99_ms=4.0, calls=100),
    ]
    single, split = summarise(measured)
    assert (single.frontends, single.p50_ratio, single.p99_ratio) == (0, 1.0, 1.0)
    assert split.frontends == 2
    assert split.p50_ratio == pytest.approx(1.2) and split.p99_ratio == pytest.approx(0.9)
    assert (split.p50_ms, split.p99_ms) == (pytest.approx(1.8), pytest.approx(2.7))
    assert "| 2 | 1.80 | 2.70 | 1.20 | 0.90 |" in report(measured)


def test_without_a_single_process_there_is_no_ratio() -> None:
    (only,) = summarise([Latency(2, 0, 1.0, 2.0, 10)])
    assert only.p50_ratio is None and only.p99_ratio is None
    assert "| 2 | 1.00 | 2.00 | - | - |" in report([Latency(2, 0, 1.0, 2.0, 10)])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_measures_one_process_and_front_ends_and_writes_every_figure(
    model_repository: Path, tmp_path: Path
) -> None:
    printed, written = run_benchmark(
        "load_tests.bench.lone_caller",
        *("--model-repository", str(model_repository), "--frontends", "0,1", "--calls", "30", "--warm-up", "5"),
        *("--rounds", "2"),
        figures=tmp_path / "lone.json",
        timeout=220,
    )
    assert "| 0 (single process) |" in printed and "| 1 |" in printed
    assert [(row["round"], row["frontends"]) for row in written["rows"]] == [(0, 0), (0, 1), (1, 1), (1, 0)]
    assert all(0 < row["p50_ms"] <= row["p99_ms"] for row in written["rows"])
    assert written["medians"][0]["p99_ratio"] == 1.0
