"""A `cnnserve serve` process on loopback for a benchmark, and what it says about a model.

The server is started by `cnnserve.server.launcher`: as its own process, exactly as deployed, on free ports, so
its CPU time can be read from the outside and the load generator never shares its interpreter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cnnserve.server import launcher
from cnnserve.server.launcher import ServerProcess
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ModelCounters:
    """A version's cumulative counters at one moment."""

    inference_count: int
    execution_count: int


class ServerUnderTest:
    """A running server: its address, its pid, and a channel for GetModel."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.process = server.process
        self.target = server.target
        self.log_path = server.log_path
        self._channel = grpc.insecure_channel(self.target)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)

    @property
    def pid(self) -> int:
        return self.process.pid

    def model_info(self, model: str) -> pb.ModelInfo:
        return self._stub.GetModel(pb.GetModelRequest(name=model), timeout=10)

    def counters(self, model: str) -> ModelCounters:
        """The newest version's image and batch counts (statistics are per version, newest first).

        Both come from the executed batches (`batch_size_counts`), which are counted together when a batch
        runs; the request-level `inference_count` is counted when a request is answered, so a snapshot taken
        mid-flight would pair it with a batch count from another moment.
        """
        statistics = self.model_info(model).versions[0].statistics
        sizes = statistics.batch_size_counts
        return ModelCounters(sum(size * count for size, count in sizes.items()), sum(sizes.values()))

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

        The generated `inference` modules are imported here, not at the top: they clash with tritonclient's own
        `inference` protos in one process, so importing this module must not load them.
        """
        from cnnserve.inference import grpc_service_pb2_grpc as inference_grpc

        return inference_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer(request, timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        return self.server.log_tail(lines)

    def close(self) -> None:
        self._channel.close()


@contextmanager
def running_server(repository: Path, flags: Sequence[str], log_path: Path) -> Iterator[ServerUnderTest]:
    """Start a server on loopback, wait until every model is loaded, yield it, then stop it with SIGTERM.

    Raises launcher.ServerStartError (a RuntimeError) with the end of the server's log when it exits or is not
    ready within launcher.READY_TIMEOUT_SECONDS.
    """
    with launcher.running_server(repository, *flags, log_path=log_path) as process:
        server = ServerUnderTest(process)
        try:
            yield server
        finally:
            server.close()
