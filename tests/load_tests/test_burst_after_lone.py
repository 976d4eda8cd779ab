"""`python -m load_tests.bench.burst_after_lone`: bursts right after a lone caller, batched or not.

Speed is not asserted (the machine is shared). What is checked: what counts as unbatched, and that a real run
reads the server's own batch counts and writes every figure. Whether the bursts batch is the server's test
(tests/server/test_models_and_health.py); here a run only has to report it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.bench.burst_after_lone import Burst, report, summarise
from tests.load_tests.runs import run_benchmark


def test_a_burst_of_one_call_a_batch_or_nearly_counts_as_unbatched() -> None:
    bursts = [Burst(160, 158, 700.0), Burst(160, 20, 1000.0), Burst(160, 80, 750.0), Burst(160, 79, 900.0)]
    assert [each.unbatched for each in bursts] == [True, False, True, False]
    summary = summarise(bursts)
    assert (summary.tries, summary.unbatched, summary.batches_max) == (4, 2, 158)
    assert summary.batches_median == 79.5 and summary.batches_mean == pytest.approx(84.25)
    assert (summary.batched_calls_per_second, summary.unbatched_calls_per_second) == (950.0, 725.0)
    assert "| 2 of 4 | 79.5 / 84.2 / 158 | 950 | 725 |" in report(summary, 160)


def test_without_an_unbatched_burst_its_rate_is_a_dash() -> None:
    summary = summarise([Burst(10, 2, 500.0)])
    assert summary.unbatched_calls_per_second is None
    assert report(summary, 10).endswith("| 0 of 1 | 2 / 2.0 / 2 | 500 | - |")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_run_counts_every_burst_from_the_servers_own_statistics(model_repository: Path, tmp_path: Path) -> None:
    printed, written = run_benchmark(
        "load_tests.bench.burst_after_lone",
        *("--model-repository", str(model_repository), "--tries", "3", "--lone-calls", "10", "--burst", "40"),
        *("--threads", "8"),
        figures=tmp_path / "bursts.json",
        timeout=160,
    )
    assert printed.count("try ") == 3 and "unbatched bursts" in printed
    assert [each["calls"] for each in written["bursts"]] == [40, 40, 40]
    assert all(1 <= each["batches"] <= 40 and each["calls_per_second"] > 0 for each in written["bursts"])
    assert written["summary"]["tries"] == 3
