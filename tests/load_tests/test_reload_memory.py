"""`python -m load_tests.bench.reload_memory`: every process's memory while a model is reloaded over and over.

Growth is not asserted (it is measured over hundreds of cycles, docs/benchmarks.md "Soak"); what is checked is
that both ways of reloading really reload, and that every process of the server is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.load_tests.runs import run_benchmark


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("way", "frontends", "processes"), [("rpc", "0", {"server"}), ("poll", "1", {"engine"})])
def test_a_run_reloads_the_model_and_reads_every_process(
    model_repository: Path, tmp_path: Path, way: str, frontends: str, processes: set[str]
) -> None:
    printed, written = run_benchmark(
        "load_tests.bench.reload_memory",
        *("--model-repository", str(model_repository), "--cycles", "4", "--way", way, "--frontends", frontends),
        figures=tmp_path / "reload.json",
        timeout=200,
    )
    assert [reading["cycles"] for reading in written["readings"]] == [0, 1, 2, 3, 4]
    assert processes <= set(written["readings"][-1]["rss_mib"])
    assert "growth over 4 cycles" in printed
