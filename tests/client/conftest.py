"""Fixtures of the client tests: a client of the session server, a repository holding only `xo` for the extra
server processes (they start in a fraction of a second), and a scripted classifier server.

The scripted server is a real gRPC server on loopback implementing cnnserve.v1.ImageClassifier from the generated
servicer base. It answers every image with "X", and can be told to fail its first calls with a status or to hold
calls until released, so that retries, deadlines and concurrency are seen from the server side.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cnnserve.client import Client
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.servers import ServerProcess

SAFETY_TIMEOUT = 10.0
"""How long a held call waits at most, so that a broken test fails instead of hanging."""


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target) as client:
        yield client


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def xo_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session repository's `xo` alone."""
    root = tmp_path_factory.mktemp("xo-only")
    (root / "xo").symlink_to(model_repository / "xo", target_is_directory=True)
    return root


@dataclass
class ScriptedClassifier(pb_grpc.ImageClassifierServicer):
    """Fails the first `fail_first` Classify calls with `failure`, then answers "X" for every image.

    With `gather` set, each call waits until `gather` calls are in the server at once (or every one of
    `expected_calls` has arrived), which makes concurrent calls meet without sleeping; `most_in_flight` records
    the most calls ever in the server at once. With `hold` set, calls wait for that event before answering.
    `results_missing` breaks the API contract: that many results fewer than images.
    """

    fail_first: int = 0
    failure: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    gather: int = 0
    expected_calls: int = 0
    hold: threading.Event | None = None
    results_missing: int = 0
    calls: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    images_seen: list[int] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _generation: int = 0

    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.ClassifyResponse:
        with self._lock:
            self.calls += 1
            number = self.calls
            self.metadata.append({key: value for key, value in context.invocation_metadata()})
        if number <= self.fail_first:
            context.abort(self.failure, f"scripted failure {number} of {self.fail_first}")
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.images_seen.append(len(request.images))
            if self.gather:
                self._wait_for_the_others()
        try:
            if self.hold is not None:
                self.hold.wait(SAFETY_TIMEOUT)
            top = [pb.LabelProbability(label="X", index=1, probability=1.0)]
            return pb.ClassifyResponse(
                model=request.model,
                version=1,
                results=[pb.Classification(top=top) for _ in request.images[self.results_missing :]],
            )
        finally:
            with self._lock:
                self.in_flight -= 1

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return pb.ModelInfo(name=request.name, labels=["O", "X"], ready=True)

    def _wait_for_the_others(self) -> None:
        """Hold this call until `gather` calls are in the server (or all expected ones arrived), then release that
        whole group at once: each group is a new generation, so calls that leave early cannot strand the rest."""
        if self.in_flight >= self.gather or self.calls >= self.expected_calls:
            self._generation += 1
            self._lock.notify_all()
            return
        generation = self._generation
        self._lock.wait_for(lambda: self._generation != generation, SAFETY_TIMEOUT)


@dataclass
class ScriptedServer:
    classifier: ScriptedClassifier
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    classifier = ScriptedClassifier()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ImageClassifierServicer_to_server(classifier, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield ScriptedServer(classifier, port)
    finally:
        if classifier.hold is not None:
            classifier.hold.set()
        server.stop(grace=None)
