"""Drive a server's ModelInfer with h2load, a load generator written in C (Debian's `nghttp2-client`).

A Python load generator saturates near 1,000-2,000 calls/s on a small machine, below what a gRPC server can
answer; h2load does not. A gRPC unary call is an HTTP/2 POST to /package.Service/Method with `content-type:
application/grpc` and `te: trailers`, whose body is a 1-byte compressed flag, a 4-byte big-endian length and the
serialized message, so h2load can send one fixed body over and over.

h2load counts HTTP/2 responses, and a gRPC error is still a 200 with its status in the trailers, so the figure
reported is the server's own: the OIP ModelStatistics `success.count` before and after, over h2load's duration.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

INSTALL_HINT = "apt-get install nghttp2-client"
MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", re.M)
_FINISHED = re.compile(r"^finished in ([\d.]+)(ms|s), ([\d.]+) req/s", re.M)


class H2loadMissing(RuntimeError):
    """h2load is not installed; the message says how to install it."""


@dataclass(frozen=True)
class H2loadSummary:
    """What h2load printed: HTTP/2 responses, which include gRPC errors."""

    succeeded: int
    failed: int
    seconds: float
    requests_per_second: float


@dataclass(frozen=True)
class Measurement:
    """One h2load run against one server, with the server's count of successful inferences over it."""

    h2load: H2loadSummary
    server_successes: int
    average_batch: float | None = None
    """Images per executed batch over the run, from the server's ModelStatistics; None when it counted no
    execution (the bare server runs no model)."""
    stage_microseconds: dict[str, float] | None = None
    """Per successful request over the run, microseconds in each of STAGES, from the server's ModelStatistics:
    where a request's time goes inside the server (the rest of h2load's latency is the protocol and the network
    stack). None for the bare server."""

    @property
    def requests_per_second(self) -> float:
        return self.server_successes / self.h2load.seconds


def h2load_executable() -> str:
    """The path of h2load; raises H2loadMissing when it is not on PATH."""
    found = shutil.which("h2load")
    if found is None:
        raise H2loadMissing(f"h2load is not installed: {INSTALL_HINT}")
    return found


def said_missing() -> bool:
    """Whether h2load is missing, having said so (and how to install it) on stderr: a benchmark's command line
    then exits 2."""
    try:
        h2load_executable()
    except H2loadMissing as exc:
        print(exc, file=sys.stderr)
        return True
    return False


def grpc_frame(message: bytes) -> bytes:
    """`message` as the body of a gRPC call: uncompressed flag, big-endian length, the bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def infer_request(model: str, input_name: str, shape: tuple[int, ...] = (1, 1, 28, 28), seed: int = 0) -> Any:
    """A ModelInferRequest for `model`: one FP32 tensor of `shape` in raw_input_contents.

    The generated `inference` modules are imported here (see load_tests.bench.server.ServerUnderTest.infer).
    """
    inference = _inference()
    pixels = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return inference.ModelInferRequest(
        model_name=model,
        inputs=[inference.ModelInferRequest.InferInputTensor(name=input_name, datatype="FP32", shape=shape)],
        raw_input_contents=[pixels.astype("<f4").tobytes()],
    )


def infer_body(model: str, input_name: str, shape: tuple[int, ...] = (1, 1, 28, 28), seed: int = 0) -> bytes:
    """`infer_request` framed as the body of a gRPC call (what h2load sends)."""
    return grpc_frame(infer_request(model, input_name, shape, seed).SerializeToString())


def input_name(target: str, model: str) -> str:
    """The name of `model`'s first input, from the server's OIP ModelMetadata."""
    with grpc.insecure_channel(target) as channel:
        metadata = inference_stub(channel).ModelMetadata(_inference().ModelMetadataRequest(name=model), timeout=10)
    return metadata.inputs[0].name


@dataclass(frozen=True)
class ServerCounts:
    """A server's ModelStatistics for one model, summed over its versions."""

    successes: int
    inferences: int
    executions: int
    nanoseconds: tuple[int, ...] = (0,) * 5
    """Cumulative time of the successful requests, per STAGES (Triton's meaning: a request's whole time in the
    server, its wait in the queue, and its share of each batch's input copy, run and output)."""


STAGES = ("request", "queue", "compute_input", "compute_infer", "compute_output")


def server_counts(target: str, model: str) -> ServerCounts:
    """`model`'s successful requests, inferred images and executed batches so far (OIP ModelStatistics)."""
    with grpc.insecure_channel(target) as channel:
        response = inference_stub(channel).ModelStatistics(_inference().ModelStatisticsRequest(name=model), timeout=10)
    stats = response.model_stats
    fields = ("success", *STAGES[1:])
    return ServerCounts(
        sum(each.inference_stats.success.count for each in stats),
        sum(each.inference_count for each in stats),
        sum(each.execution_count for each in stats),
        tuple(sum(getattr(each.inference_stats, field).ns for each in stats) for field in fields),
    )


def success_count(target: str, model: str) -> int:
    """The sum of `inference_stats.success.count` over `model`'s versions (OIP ModelStatistics)."""
    return server_counts(target, model).successes


def parse_summary(text: str) -> H2loadSummary:
    """h2load's `finished in ...` and `requests: ...` lines; raises ValueError when either is missing."""
    requests, finished = _REQUESTS.search(text), _FINISHED.search(text)
    if requests is None or finished is None:
        raise ValueError(f"no h2load summary in its output:\n{text[-2000:]}")
    seconds = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    return H2loadSummary(int(requests.group(4)), int(requests.group(5)), seconds, float(finished.group(3)))


def run_h2load(
    url: str, body: bytes, seconds: float, connections: int, streams: int, threads: int = 1
) -> H2loadSummary:
    """POST `body` to `url` for `seconds` over `connections` connections of `streams` concurrent streams each,
    from `threads` threads (h2load shares the connections out among them; one thread tops out near 50,000 small
    calls/s, which a many-core server can pass).

    Raises H2loadMissing, or RuntimeError when h2load fails or prints no summary.
    """
    executable = h2load_executable()
    with tempfile.TemporaryDirectory(prefix="cnnserve-h2load-") as scratch:
        body_file = Path(scratch) / "body.bin"
        body_file.write_bytes(body)
        command = [
            executable,
            *("-c", str(connections), "-m", str(streams), "-t", str(min(threads, connections)), "-D", f"{seconds:g}"),
            *("-d", str(body_file), "-H", "content-type: application/grpc", "-H", "te: trailers"),
            url,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"h2load exited with {completed.returncode}:\n{completed.stdout[-2000:]}{completed.stderr}")
    try:
        return parse_summary(completed.stdout)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from exc


def measure(
    target: str, model: str, body: bytes, seconds: float, in_flight: int, connections: int = 4, threads: int = 1
) -> Measurement:
    """h2load against `target` (host:port) with `in_flight` calls in flight, and the server's successes over it.

    `in_flight` is split over `connections` connections (it must be a multiple of it), driven by `threads`.
    """
    if in_flight % connections:
        raise ValueError(f"in_flight {in_flight} is not a multiple of connections {connections}")
    before = server_counts(target, model)
    url = f"http://{target}{MODEL_INFER_PATH}"
    summary = run_h2load(url, body, seconds, connections, in_flight // connections, threads)
    after = server_counts(target, model)
    executions = after.executions - before.executions
    average = (after.inferences - before.inferences) / executions if executions > 0 else None
    successes = after.successes - before.successes
    stages = None
    if successes > 0:
        spent = (end - start for start, end in zip(before.nanoseconds, after.nanoseconds, strict=True))
        stages = {stage: ns / successes / 1000 for stage, ns in zip(STAGES, spent, strict=True)}
    return Measurement(summary, successes, average, stages)


def _inference() -> Any:
    from cnnserve.inference import grpc_service_pb2

    return grpc_service_pb2


def inference_stub(channel: grpc.Channel) -> Any:
    """The Open Inference Protocol's stub on `channel`."""
    from cnnserve.inference import grpc_service_pb2_grpc

    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
