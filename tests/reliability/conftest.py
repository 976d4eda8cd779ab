"""What the reliability tests share: a hardened server with small limits, and ways to watch a server process.

The hardened server is started once for the hostile-input tests and the property-based test, with limits small
enough to reach cheaply: at most 4 images per request, 1,000,000 pixels per image, 1 MiB per message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc as inference_grpc

from cnnserve.export import render_o, render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to, running_server

MAX_IMAGES = 4
MAX_PIXELS = 1_000_000
MAX_MESSAGE_BYTES = 1024 * 1024
HARDENED_FLAGS = (
    "--max-images-per-request",
    str(MAX_IMAGES),
    "--max-image-pixels",
    str(MAX_PIXELS),
    "--max-message-bytes",
    str(MAX_MESSAGE_BYTES),
    "--max-queue-delay-ms",
    "2",
)

X_PNG = png_bytes(render_x())
O_PNG = png_bytes(render_o())


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid`, from /proc/<pid>/status (VmRSS, reported in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid} reports no VmRSS")


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread, while used as a context manager."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_bytes(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(rss_bytes(self.pid))

    @property
    def peak(self) -> int:
        return max(self.samples)


def classify_x(stub: pb_grpc.ImageClassifierStub, **call: object) -> str:
    """The label the server gives a generated X (it must be "X")."""
    request = pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=X_PNG)])
    return stub.Classify(request, timeout=10, **call).results[0].top[0].label


def assert_still_serving(server: ServerProcess, stub: pb_grpc.ImageClassifierStub) -> None:
    assert server.process.poll() is None, f"the server died:\n{server.log()}"
    assert classify_x(stub) == "X"


@pytest.fixture(scope="package")
def hardened_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(model_repository, *HARDENED_FLAGS, workdir=tmp_path_factory.mktemp("hardened")) as server:
        yield server


@pytest.fixture(scope="package")
def hardened_channel(hardened_server: ServerProcess) -> Iterator[grpc.Channel]:
    with channel_to(hardened_server) as channel:
        yield channel


@pytest.fixture(scope="package")
def classifier(hardened_channel: grpc.Channel) -> pb_grpc.ImageClassifierStub:
    return pb_grpc.ImageClassifierStub(hardened_channel)


@pytest.fixture(scope="package")
def inference(hardened_channel: grpc.Channel) -> inference_grpc.GRPCInferenceServiceStub:
    return inference_grpc.GRPCInferenceServiceStub(hardened_channel)
