"""`cnnserve bench --quick` end to end: real servers, real load-generator processes, real ONNX Runtime.

Speed is not asserted (the machine is shared); what is checked is that every part of the run measured something
and that the reports say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from load_tests.bench.results import BaselinePoint, LatencySummary, throughput_batch_size

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def run_bench(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cnnserve", "bench", *flags], capture_output=True, text=True, timeout=110, check=False
    )


def test_quick_benchmark_measures_everything_and_writes_every_report(model_repository: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench"
    completed = run_bench(
        "--quick",
        "--model-repository",
        str(model_repository),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output",
        str(output),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "mnist_net batching_on, 64 callers" in completed.stderr  # the progress display

    report = json.loads((output / "results.json").read_text())
    (model,) = report["models"]
    assert model["model"] == "mnist_net"
    assert model["weights"] == "as found"
    assert model["input_shape"] == [1, 28, 28]
    assert [p["batch_size"] for p in model["onnxruntime"]] == [1, 8, 64]
    assert all(p["images_per_second"] > 0 for p in model["onnxruntime"])
    assert model["round_trip"]["p99_ms"] > 0

    sweeps = {sweep["mode"]: sweep for sweep in model["sweeps"]}
    assert set(sweeps) == {"batching_off", "batching_on"}
    assert sweeps["batching_off"]["batching"]["max_batch_size"] == 1
    for sweep in sweeps.values():
        assert [p["concurrency"] for p in sweep["points"]] == [1, 8, 64]
        for point in sweep["points"]:
            assert point["requests"] > 0 and point["errors"] == {}
            assert point["latency"]["p50_ms"] <= point["latency"]["p99_ms"]
            assert point["server_cpu_cores"] > 0 and point["generator_cpu_cores"] > 0
    assert all(p["average_batch_size"] == 1.0 for p in sweeps["batching_off"]["points"])
    # 64 callers against a batching server: batches of more than one image (the server's own statistics).
    assert sweeps["batching_on"]["points"][-1]["average_batch_size"] > 1.0

    # Saturation with 8 images per ModelInfer call, in the message and in shared memory (the quick preset).
    saturation = {point["request"]: point for point in model["saturation"]}
    assert set(saturation) == {
        "8 images per ModelInfer, raw in the message",
        "8 images per ModelInfer, in shared memory",
    }
    for point in saturation.values():
        assert point["configuration"] == "defaults" and point["images_per_request"] == 8
        assert point["point"]["requests"] > 0 and point["point"]["errors"] == {}
        assert point["point"]["images_per_second"] == pytest.approx(8 * point["point"]["requests_per_second"])
    assert not list(Path("/dev/shm").glob("cnnserve_bench_*")), "the bench removes its shared memory objects"

    targets = {t["name"]: t for t in report["targets"]}
    assert len(targets) == 2 and all(t["passed"] is not None for t in targets.values())

    markdown = (output / "results.md").read_text()
    assert "### Bare ONNX Runtime (the limit)" in markdown and "| 64 | on |" in markdown
    assert "### Saturation by request shape and configuration" in markdown
    for plot in ("throughput.png", "latency.png", "saturation.png"):
        assert (output / plot).read_bytes().startswith(b"\x89PNG")


def test_invalid_settings_are_refused_before_anything_runs(tmp_path: Path) -> None:
    completed = run_bench("--concurrency", "0,4", "--output", str(tmp_path))
    assert completed.returncode == 2
    assert "concurrency" in completed.stderr and "at least 1" in completed.stderr
    assert not (tmp_path / "results.json").exists()


def baseline(images_per_second: dict[int, float], sessions: int = 2) -> list[BaselinePoint]:
    latency = LatencySummary.of(np.array([0.001]))
    return [
        BaselinePoint(size, 100, rate, latency, 2.0, 2.0, sessions=sessions) for size, rate in images_per_second.items()
    ]


def test_the_throughput_configuration_batches_as_far_as_bare_runs_stay_as_fast() -> None:
    # catsdogs on two cores: bare ONNX Runtime flat across batch sizes; the server's own work per batch then
    # makes the largest batch the best (the smallest, 1, once left single images unbatched).
    assert throughput_batch_size(baseline({1: 509.5, 2: 505.0, 4: 503.0, 8: 507.0, 16: 502.0, 32: 470.0})) == 16
    # A model that gains from batching: its best batch, the largest near it.
    assert throughput_batch_size(baseline({1: 4_000.0, 8: 9_000.0, 16: 11_000.0, 32: 10_500.0})) == 16
    # Without side-by-side sessions there is nothing to choose from.
    assert throughput_batch_size(baseline({1: 500.0, 8: 510.0}, sessions=1)) is None
