"""`python -m load_tests.bench.explain_beside`, briefly: classifications alone and with explanations beside.

Latency is not asserted (the machine is shared); what is checked is that both windows were measured without
errors, that explanations did run beside the classifications, and that the report and plot are written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_classifications_are_measured_alone_and_with_explanations_beside(
    model_repository: Path, tmp_path: Path
) -> None:
    report, picture = tmp_path / "explain.json", tmp_path / "explain.png"
    command = [sys.executable, "-m", "load_tests.bench.explain_beside", "--model-repository", str(model_repository)]
    command += ["--callers", "4", "--duration", "1.5", "--rounds", "1", "--masks", "30", "--load-processes", "1"]
    command += ["--json", str(report), "--plot", str(picture)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=110, check=False)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    assert "with explanations" in completed.stdout and "ratio" in completed.stdout

    (alone, beside), *_ = json.loads(report.read_text())["rounds"]
    assert not alone["explaining"] and beside["explaining"]
    assert alone["errors"] == beside["errors"] == 0
    assert alone["calls_per_second"] > 0 and beside["calls_per_second"] > 0
    assert beside["explanations"] >= 1 and beside["explanation_rows_per_second"] > 0
    assert picture.read_bytes().startswith(b"\x89PNG")
