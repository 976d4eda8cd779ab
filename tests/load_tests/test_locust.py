"""The Locust load test, as `make load-test` runs it, briefly: a real server, real Locust, real gRPC."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
RUN_LOCUST = Path(__file__).resolve().parents[2] / "load_tests" / "run_locust.py"


def test_locust_run_reports_successful_calls_of_every_payload_and_no_failures(
    model_repository: Path, tmp_path: Path
) -> None:
    output = tmp_path / "locust"
    completed = subprocess.run(
        [
            sys.executable,
            str(RUN_LOCUST),
            "--model-repository",
            str(model_repository),
            "--model",
            "mnist_net",
            "--users",
            "4",
            "--run-time",
            "5",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]

    with (output / "locust_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
    for kind in ("png", "jpeg", "uint8", "float32"):
        assert int(rows[f"Classify {kind}"]["Request Count"]) > 0, f"no Classify {kind} calls"
    assert (output / "locust.html").stat().st_size > 0
    assert "serving mnist_net (as found weights)" in completed.stdout
