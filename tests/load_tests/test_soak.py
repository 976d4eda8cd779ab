"""`python -m load_tests.soak`: a long run at a constant rate, every answer checked, every process's memory watched.

Memory growth is not asserted (a soak measures it over minutes to hours); what is checked is that cancelled calls
count as cancelled, not as errors or losses, and that a real run against a multi-process server names and reads
the memory of each of its processes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from load_tests.soak import CANCELLED, EXPECTED_ERROR, OK, Recorder, Second, SoakSettings, memory_growth, summarise
from tests.load_tests.runs import run_module

MiB = 2**20


def settings(**overrides: object) -> SoakSettings:
    values = dict(duration=4, rate=10, timeout=1, max_in_flight=8, bad_fraction=0, cancel_fraction=0.5, connections=2)
    values |= dict(warm_up=1, out=Path("."), seed=0)
    return SoakSettings(**{**values, **overrides})  # type: ignore[arg-type]


def test_memory_growth_is_measured_from_the_end_of_the_warm_up() -> None:
    points = [(0.0, 100 * MiB), (1.0, 110 * MiB), (2.0, 111 * MiB), (3.0, 115 * MiB), (4.0, None)]
    growth = memory_growth(points, warm_up=1.0)
    assert growth["rss_start_mib"] == 100.0 and growth["rss_after_warm_up_mib"] == 110.0
    assert growth["rss_end_mib"] == 115.0 and growth["growth_after_warm_up_mib"] == 5.0
    assert memory_growth([(0.0, None)], warm_up=1.0) == {}


def test_cancelled_calls_are_neither_errors_nor_lost_and_each_process_has_its_own_memory() -> None:
    recorder = Recorder(started=0.0)
    recorder.sent = recorder.answered = 6
    recorder.seconds = {
        0: Second(0.0, Counter({OK: 2, CANCELLED: 1}), [0.01] * 3, {"engine": 90 * MiB, "front-end 0": 80 * MiB}),
        1: Second(1.0, Counter({OK: 1, EXPECTED_ERROR: 1, CANCELLED: 1}), [0.01] * 3, {"engine": 95 * MiB}),
    }
    summary = summarise(recorder, settings())
    assert (summary["ok"], summary["cancelled_by_caller"], summary["lost"], summary["errors"]) == (3, 2, 0, {})
    assert summary["rss_start_mib"] == 170.0
    assert summary["memory_by_process"]["engine"]["growth_after_warm_up_mib"] == 0.0
    assert summary["memory_by_process"]["engine"]["rss_start_mib"] == 90.0
    assert summary["memory_by_process"]["front-end 0"]["rss_end_mib"] == 80.0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_soak_of_a_multi_process_server_reads_every_process_and_loses_nothing(
    model_repository: Path, tmp_path: Path
) -> None:
    completed = run_module(
        "load_tests.soak",
        *("--model-repository", str(model_repository), "--duration", "6", "--rate", "80", "--warm-up", "2"),
        *("--cancel-fraction", "0.3", "--connections", "4", "--out", str(tmp_path)),
        *("--serve-flag=--frontends", "--serve-flag=2"),
        timeout=160,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (record_file,) = tmp_path.glob("soak-*.json")
    assert record_file.with_suffix(".png").stat().st_size > 10_000
    summary = json.loads(record_file.read_text())["summary"]
    assert summary["lost"] == 0 and summary["wrong_answers"] == 0 and summary["errors"] == {}
    assert summary["cancelled_by_caller"] > 0 and summary["ok"] > 0
    processes = summary["memory_by_process"]
    assert {"supervisor", "engine", "front-end 0", "front-end 1", "resource tracker"} <= set(processes)
    assert all(figures["rss_end_mib"] > 5 for figures in processes.values())
