"""Triton's perf_analyzer against a real server: it must measure cnnserve as it measures Triton.

perf_analyzer reads the statistics extension between two snapshots and aborts unless success, queue and the
three compute counts moved together, so these tests check the statistics as Triton's own tool reads them; the
last test checks the same rule without it. perf_analyzer ships in the tritonclient 2.47.0 wheel only:
tests/tools/install_perf_analyzer.sh unpacks it into build/perf_analyzer/ (CI runs it); without it those tests
skip, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.servers import ServerProcess

INSTALL_DIR = Path(os.environ.get("PERF_ANALYZER_DIR", Path(__file__).parents[2] / "build" / "perf_analyzer"))
PERF_ANALYZER = INSTALL_DIR / "bin" / "perf_analyzer"
MEASUREMENT = ("--measurement-interval", "500", "--max-trials", "10", "--stability-percentage", "100")
"""Half-second windows, and at most ten of them, so that a run stays within seconds; on a busy machine three
windows in a row agree within 2x, while perf_analyzer's default of 10% may take longer than ten windows."""
RUN_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def perf_analyzer(server: ServerProcess):
    """Run perf_analyzer on mnist_net over gRPC with `options`; returns its output, failing on a non-zero exit."""
    if not PERF_ANALYZER.exists():
        pytest.skip(f"perf_analyzer is not installed at {PERF_ANALYZER}: run tests/tools/install_perf_analyzer.sh")

    def run(*options: str) -> str:
        command = [str(PERF_ANALYZER), "-m", "mnist_net", "-i", "grpc", "-u", server.target, *MEASUREMENT, *options]
        environment = {**os.environ, "LD_LIBRARY_PATH": str(INSTALL_DIR / "lib")}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, env=environment, check=False
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{output}"
        return output

    return run


def throughput(output: str) -> float:
    """perf_analyzer's client-side "Throughput: X infer/sec"."""
    match = re.search(r"Throughput: ([0-9.]+) infer/sec", output)
    assert match, output
    return float(match.group(1))


def server_side_requests(output: str) -> int:
    """The successful requests perf_analyzer read from the statistics extension over its window."""
    match = re.search(r"Successful request count: (\d+)", output)
    assert match, output
    return int(match.group(1))


@pytest.mark.parametrize("concurrency", [1, 4, 16, 64])
def test_perf_analyzer_measures_the_default_random_inputs(perf_analyzer, concurrency: int) -> None:
    output = perf_analyzer("--concurrency-range", str(concurrency))
    assert throughput(output) > 0, output
    assert server_side_requests(output) > 0, output


def test_perf_analyzer_measures_zero_inputs_with_concurrent_callers(perf_analyzer) -> None:
    output = perf_analyzer("--concurrency-range", "4", "--input-data", "zero")
    assert throughput(output) > 0, output
    assert server_side_requests(output) > 0, output


def test_statistics_count_each_request_in_every_figure_at_once(server: ServerProcess) -> None:
    """What perf_analyzer relies on, checked directly: every snapshot, even one taken while requests are in
    flight, has success, queue and compute counts equal; executions are counted per batch and size."""

    def snapshot(client: triton.InferenceServerClient):
        (stats,) = client.get_inference_statistics("mnist_net", "1").model_stats
        return stats

    def send(rows: int) -> None:
        with triton.InferenceServerClient(server.target) as client:
            for _ in range(20):
                infer_input = triton.InferInput("input", [rows, 1, 28, 28], "FP32")
                infer_input.set_data_from_numpy(np.zeros((rows, 1, 28, 28), np.float32))
                client.infer("mnist_net", [infer_input])

    row_counts = [1, 2, 3, 1, 2, 3, 1, 2]
    with triton.InferenceServerClient(server.target) as client:
        before = snapshot(client)
        with ThreadPoolExecutor(len(row_counts)) as pool:
            senders = [pool.submit(send, rows) for rows in row_counts]
            snapshots = []
            while not all(sender.done() for sender in senders):
                snapshots.append(snapshot(client))
            for sender in senders:
                sender.result()
        after = snapshot(client)

    for stats in [*snapshots, after]:
        figures = stats.inference_stats
        parts = (figures.queue, figures.compute_input, figures.compute_infer, figures.compute_output)
        assert [part.count for part in parts] == [figures.success.count] * 4, figures
        for batch in stats.batch_stats:
            assert batch.compute_input.count == batch.compute_infer.count == batch.compute_output.count, batch
        assert sum(batch.compute_infer.count for batch in stats.batch_stats) == stats.execution_count
    assert len(snapshots) > 1, "the snapshots are meant to be taken while requests are in flight"
    assert after.inference_stats.success.count - before.inference_stats.success.count == 20 * len(row_counts)
    assert after.inference_count - before.inference_count == 20 * sum(row_counts)

    def rows_executed(stats) -> int:
        return sum(batch.batch_size * batch.compute_infer.count for batch in stats.batch_stats)

    assert rows_executed(after) - rows_executed(before) == 20 * sum(row_counts), "every row ran in one batch"
