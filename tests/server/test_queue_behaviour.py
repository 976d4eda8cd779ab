"""Deadlines, cancellation and a full queue, seen by real gRPC callers of a real server.

The server is started with a long queue delay (2 s) and a large max batch, so lone requests sit in the queue
long enough for the caller to give up or for the queue to fill.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cnnserve.export import render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to, running_server

X = pb.Image(encoded=png_bytes(render_x()))


@pytest.fixture(scope="module")
def slow_queue_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    flags = (
        "--max-queue-delay-ms",
        "2000",
        "--no-adaptive-queue-delay",
        "--max-batch-size",
        "64",
        "--max-queue-size",
        "3",
    )
    with running_server(model_repository, *flags, workdir=tmp_path_factory.mktemp("slow")) as server:
        yield server


@pytest.fixture
def stub(slow_queue_server: ServerProcess):
    with channel_to(slow_queue_server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def executions(stub) -> int:
    return stub.GetModel(pb.GetModelRequest(name="xo")).versions[0].statistics.execution_count


def queue_depth(server: ServerProcess) -> float:
    """The xo queue depth, from a real scrape of the metrics endpoint."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "cnnserve_queue_depth":
            return sum(s.value for s in family.samples if s.labels.get("model") == "xo")
    return 0.0


def test_a_full_queue_refuses_at_once_and_the_accepted_requests_complete(stub, slow_queue_server) -> None:
    accepted = [stub.Classify.future(pb.ClassifyRequest(model="xo", images=[X]), timeout=10) for _ in range(3)]
    deadline = time.monotonic() + 5
    while queue_depth(slow_queue_server) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Classify(pb.ClassifyRequest(model="xo", images=[X]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "takes at most 3" in refused.value.details()
    assert time.monotonic() - started < 1.5, "a full queue must refuse at once, not after the queue delay"
    assert [f.result().results[0].top[0].label for f in accepted] == ["X", "X", "X"]


def test_a_request_whose_deadline_passes_in_the_queue_is_answered_and_never_computed(stub) -> None:
    before = executions(stub)
    with pytest.raises(grpc.RpcError) as late:
        stub.Classify(pb.ClassifyRequest(model="xo", images=[X]), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(2.5)
    assert executions(stub) == before, "the expired request must not have run"


def test_a_cancelled_call_leaves_the_queue_and_is_never_computed(stub) -> None:
    before = executions(stub)
    call = stub.Classify.future(pb.ClassifyRequest(model="xo", images=[X]), timeout=10)
    time.sleep(0.3)
    assert call.cancel()
    time.sleep(2.5)
    assert executions(stub) == before
    answer = stub.Classify(pb.ClassifyRequest(model="xo", images=[X]), timeout=10)
    assert answer.results[0].top[0].label == "X", "the queue space of the cancelled call is free again"
