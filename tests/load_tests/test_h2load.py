"""`python -m load_tests.bench.h2load_compare`, briefly: h2load (C) against cnnserve and a bare grpc.aio server.

Speed is not asserted (the machine is shared); what is checked is that both servers answered, and that the
successes cnnserve counted itself are the calls h2load saw answered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.bench.h2load import INSTALL_HINT, grpc_frame, parse_summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None, reason=f"h2load is not installed: {INSTALL_HINT}")


def test_grpc_frame_is_flag_length_and_message() -> None:
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_parse_summary_reads_succeeded_and_rate() -> None:
    summary = parse_summary(
        "finished in 3.00s, 2255.00 req/s, 1.01MB/s\n"
        "requests: 6765 total, 6829 started, 6765 done, 6760 succeeded, 5 failed, 5 errored, 0 timeout\n"
    )
    assert (summary.succeeded, summary.failed, summary.seconds, summary.requests_per_second) == (6760, 5, 3.0, 2255.0)


@needs_h2load
def test_compare_measures_both_servers_and_counts_what_h2load_saw(model_repository: Path, tmp_path: Path) -> None:
    figures = tmp_path / "h2load.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "load_tests.bench.h2load_compare",
            *("--model-repository", str(model_repository), "--cache-dir", str(tmp_path / "cache")),
            *("--duration", "2", "--json", str(figures)),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    assert "ratio cnnserve / bare" in completed.stdout

    result = json.loads(figures.read_text())
    assert result["in_flight"] == 64
    for side in ("cnnserve", "bare_grpc_aio"):
        assert result[side]["requests_per_second"] > 0
        assert result[side]["h2load"]["failed"] == 0
    counted, seen = result["cnnserve"]["server_successes"], result["cnnserve"]["h2load"]["succeeded"]
    assert seen > 0 and abs(counted - seen) <= 0.03 * seen
    assert result["ratio"] > 0
