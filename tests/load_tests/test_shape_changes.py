"""`python -m load_tests.bench.shape_changes`: the same batches at one shape and at changing shapes.

Speed is not asserted (on this CPU changing shapes cost less, on CUDA far more); what is checked is that both ways
run the very same batch sizes, covering every size, and that a real run on the CPU prints and writes each mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.bench.shape_changes import ShapeCost, batch_sizes, powers_of_two_through, report
from tests.load_tests.runs import run_benchmark


def test_the_batches_cover_every_size_in_a_fixed_shuffled_order() -> None:
    sizes = batch_sizes(8, 20)
    assert sorted(set(sizes)) == list(range(1, 9)) and len(sizes) == 20
    assert sizes == batch_sizes(8, 20), "the same order every run"
    assert sizes[:8] != sorted(sizes[:8]), "shuffled, so consecutive batches change shape"
    assert powers_of_two_through(32) == (1, 2, 4, 8, 16, 32) and powers_of_two_through(24) == (1, 2, 4, 8, 16, 24)


def test_the_table_gives_each_search_with_its_ratio() -> None:
    costs = [
        ShapeCost("mnist_net", "exhaustive", "CUDAExecutionProvider", 0.2, 25.0),
        ShapeCost("catsdogs", "heuristic", "CPU", 0.5, 0.4),
    ]
    table = report(costs, 32)
    assert "| mnist_net | exhaustive | CUDAExecutionProvider | 0.200 | 25.000 | 125.00 |" in table
    assert "| catsdogs | heuristic | CPU | 0.500 | 0.400 | 0.80 |" in table


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_run_on_the_cpu_measures_each_search_both_ways(model_repository: Path, tmp_path: Path) -> None:
    printed, written = run_benchmark(
        "load_tests.bench.shape_changes",
        *("--provider", "cpu", "--model-repository", str(model_repository), "--batches", "24"),
        *("--max-batch-size", "8"),
        figures=tmp_path / "shapes.json",
        timeout=160,
    )
    assert "| mnist_net | exhaustive | CPUExecutionProvider |" in printed
    assert [cost["search"] for cost in written] == ["exhaustive", "heuristic"]
    assert all(cost["one_shape_ms"] > 0 and cost["changing_shapes_ms"] > 0 for cost in written)
