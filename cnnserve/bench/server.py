"""A `cnnserve serve` process on loopback for a benchmark or a load test, and what it says about a model.

The server runs as its own process, exactly as deployed, on free ports (--grpc-port 0, --port-file), so its CPU
time can be read from the outside and the load generator never shares its interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc

READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class ModelCounters:
    """A version's cumulative counters at one moment."""

    inference_count: int
    execution_count: int


class ServerUnderTest:
    """A running server: its address, its pid, and a channel for GetModel."""

    def __init__(self, process: subprocess.Popen[bytes], grpc_port: int, log_path: Path) -> None:
        self.process = process
        self.target = f"127.0.0.1:{grpc_port}"
        self.log_path = log_path
        self._channel = grpc.insecure_channel(self.target)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)

    @property
    def pid(self) -> int:
        return self.process.pid

    def model_info(self, model: str) -> pb.ModelInfo:
        return self._stub.GetModel(pb.GetModelRequest(name=model), timeout=10)

    def counters(self, model: str) -> ModelCounters:
        """The newest version's image and batch counts (statistics are per version, newest first)."""
        statistics = self.model_info(model).versions[0].statistics
        return ModelCounters(statistics.inference_count, statistics.execution_count)

    def wait_idle(self, model: str, timeout: float = 10.0, interval: float = 0.05) -> None:
        """Return once the model's image count stops moving: the previous point's queue is drained."""
        deadline = time.monotonic() + timeout
        last = self.counters(model)
        while time.monotonic() < deadline:
            time.sleep(interval)
            now = self.counters(model)
            if now == last:
                return
            last = now

    def classify(self, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
        return self._stub.Classify(request, timeout=30)

    def infer(self, request: Any) -> Any:
        """ModelInfer over the Open Inference Protocol (a cnnserve.inference ModelInferRequest and response).

        The generated `inference` modules are imported here, not at the top: the test suite imports this module
        beside tritonclient, whose own `inference` protos would clash with them in one process.
        """
        from cnnserve.inference import grpc_service_pb2_grpc as inference_grpc

        return inference_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer(request, timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self._channel.close()


def serve_command(repository: Path, flags: Sequence[str], port_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cnnserve",
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--port-file",
        str(port_file),
        *flags,
    ]


@contextmanager
def running_server(repository: Path, flags: Sequence[str], log_path: Path) -> Iterator[ServerUnderTest]:
    """Start a server on loopback, wait until every model is loaded, yield it, then stop it with SIGTERM.

    Raises RuntimeError with the end of the server's log when it exits or is not ready within
    READY_TIMEOUT_SECONDS.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-") as scratch:
        port_file = Path(scratch) / "ports.json"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                serve_command(repository, flags, port_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            grpc_port = _wait_for_ports(process, port_file, log_path)
            server = ServerUnderTest(process, grpc_port, log_path)
            try:
                yield server
            finally:
                server.close()
        finally:
            _stop(process)


def _wait_for_ports(process: subprocess.Popen[bytes], port_file: Path, log_path: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; its log:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready after {READY_TIMEOUT_SECONDS:.0f}s:\n{_tail(log_path)}")
        time.sleep(0.05)
    # The file is written in one call once ready; a reader may still catch it empty for an instant.
    for _ in range(100):
        text = port_file.read_text()
        if text:
            return int(json.loads(text)["grpc_port"])
        time.sleep(0.01)
    raise RuntimeError(f"the server's port file {port_file} stayed empty")


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
