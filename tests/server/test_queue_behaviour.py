"""Deadlines, cancellation and a full queue, seen by real gRPC callers of a real server.

The server is started with a long queue delay (2 s) and a large max batch, so lone requests sit in the queue
long enough for the caller to give up or for the queue to fill.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from cnnserve.export import render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to, queue_depth, running_server, wait_until

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


def images_computed(stub) -> int:
    """Every xo image the server has run through the model, answered or not: its executed batch sizes, summed.

    Not inference_count: that counts only the images of requests that succeeded, so a request computed after
    its caller had gone would not show in it.
    """
    counts = stub.GetModel(pb.GetModelRequest(name="xo")).versions[0].statistics.batch_size_counts
    return sum(size * batches for size, batches in counts.items())


def classify_x(stub) -> str:
    return stub.Classify(pb.ClassifyRequest(model="xo", images=[X]), timeout=10).results[0].top[0].label


def test_a_full_queue_refuses_at_once_and_the_accepted_requests_complete(stub, slow_queue_server) -> None:
    accepted = [stub.Classify.future(pb.ClassifyRequest(model="xo", images=[X]), timeout=10) for _ in range(3)]
    wait_until(lambda: queue_depth(slow_queue_server, "xo") == 3, "the three requests never queued", timeout=5)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Classify(pb.ClassifyRequest(model="xo", images=[X]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "takes at most 3" in refused.value.details()
    assert time.monotonic() - started < 1.5, "a full queue must refuse at once, not after the queue delay"
    assert [f.result().results[0].top[0].label for f in accepted] == ["X", "X", "X"]


def test_a_request_whose_deadline_passes_in_the_queue_is_answered_and_never_computed(stub) -> None:
    """The next request goes through the same queue after it: had the late one still been there, it would have
    run in the same batch, and the server would count two images computed instead of one."""
    before = images_computed(stub)
    with pytest.raises(grpc.RpcError) as late:
        stub.Classify(pb.ClassifyRequest(model="xo", images=[X]), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert classify_x(stub) == "X"
    assert images_computed(stub) == before + 1, "the expired request must not have run"


def test_a_cancelled_call_leaves_the_queue_and_is_never_computed(stub, slow_queue_server) -> None:
    before = images_computed(stub)
    call = stub.Classify.future(pb.ClassifyRequest(model="xo", images=[X]), timeout=10)
    wait_until(lambda: queue_depth(slow_queue_server, "xo") == 1, "the call never queued", timeout=5)
    assert call.cancel()
    wait_until(lambda: queue_depth(slow_queue_server, "xo") == 0, "the cancelled call stayed queued", timeout=5)
    assert classify_x(stub) == "X", "the queue space of the cancelled call is free again"
    assert images_computed(stub) == before + 1, "the cancelled call must not have run"
