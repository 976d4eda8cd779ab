"""`python -m load_tests.bench.reload_memory`: every process's memory while a model is reloaded over and over.

Growth is not asserted (it is measured over hundreds of cycles, docs/benchmarks.md "Soak"); what is checked is
that both ways of reloading really reload, and that every process of the server is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.load_tests.runs import run_module


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("way", "frontends", "processes"), [("rpc", "0", {"server"}), ("poll", "1", {"engine"})])
def test_a_run_reloads_the_model_and_reads_every_process(
    model_repository: Path, tmp_path: Path, way: str, frontends: str, processes: set[str]
) -> None:
    figures = tmp_path / "reload.json"
    completed = run_module(
        "load_tests.bench.reload_memory",
        *("--model-repository", str(model_repository), "--cycles", "4", "--way", way, "--frontends", frontends),
        *("--json", str(figures)),
        timeout=200,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    written = json.loads(figures.read_text())
    assert [reading["cycles"] for reading in written["readings"]] == [0, 1, 2, 3, 4]
    assert processes <= set(written["readings"][-1]["rss_mib"])
    assert "growth over 4 cycles" in completed.stdout
