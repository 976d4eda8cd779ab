"""Model discovery, health, reflection and the batching that concurrent callers get."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cnnserve.export import render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to


@pytest.fixture(scope="module")
def channel(server: ServerProcess):
    with channel_to(server) as channel:
        yield channel


def test_health_is_serving_once_every_model_is_loaded(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cnnserve.v1.ImageClassifier"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"cnnserve.v1.ImageClassifier", "grpc.health.v1.Health"} <= names


def test_list_models_describes_every_model(channel) -> None:
    models = {m.name: m for m in pb_grpc.ImageClassifierStub(channel).ListModels(pb.ListModelsRequest()).models}
    assert set(models) == {"mnist_net", "xo"}
    xo = models["xo"]
    assert xo.ready and list(xo.labels) == ["O", "X"]
    assert (xo.input.channels, xo.input.height, xo.input.width, xo.input.color) == (1, 9, 9, "L")
    assert list(xo.preprocessing.mean) == pytest.approx([0.5]) and list(xo.preprocessing.std) == pytest.approx([0.5])
    assert models["mnist_net"].output_kind == "log_probabilities"
    assert xo.batching.max_batch_size == 32 and xo.batching.max_queue_delay_microseconds == 10_000


def test_get_model_reports_the_execution_provider_really_in_use(channel) -> None:
    info = pb_grpc.ImageClassifierStub(channel).GetModel(pb.GetModelRequest(name="mnist_net"))
    (version,) = info.versions
    assert version.ready and version.state == "READY"
    assert version.execution_provider == "CPUExecutionProvider", "this machine has no GPU"


def test_get_model_of_an_unknown_model_is_not_found(channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        pb_grpc.ImageClassifierStub(channel).GetModel(pb.GetModelRequest(name="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_concurrent_requests_are_batched_together_even_right_after_a_lone_caller(channel) -> None:
    """A lone caller's batches run on the server's event loop; the burst that follows must still be seen as one,
    not as a convoy of lone calls (server/drain.py, `CallGate.serves_one_call`). Without the gate's wait, at
    least one of the four bursts ran one call a batch in each of 5 runs of this test."""
    bursts_after_a_lone_caller_are_batched(channel)


def bursts_after_a_lone_caller_are_batched(channel: grpc.Channel) -> None:
    """Four times: 50 calls of a lone caller, then 160 calls from 16 threads at once, which must run in fewer than
    80 batches (xo, at most 32 a batch)."""
    stub = pb_grpc.ImageClassifierStub(channel)
    request = pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=png_bytes(render_x()))])
    for burst in range(4):
        for _ in range(50):
            stub.Classify(request, timeout=10)
        before = stub.GetModel(pb.GetModelRequest(name="xo")).versions[0].statistics
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda _: stub.Classify(request, timeout=10), range(160)))
        assert all(a.results[0].top[0].label == "X" for a in answers)
        after = stub.GetModel(pb.GetModelRequest(name="xo")).versions[0].statistics
        requests = after.request_count - before.request_count
        executions = after.execution_count - before.execution_count
        assert requests == 160
        assert executions < requests / 2, f"burst {burst}: 160 concurrent calls ran as {executions} batches"
        new_sizes = {size for size, count in after.batch_size_counts.items() if count > before.batch_size_counts[size]}
        assert max(new_sizes) > 1
        assert np.all(np.array(list(after.batch_size_counts)) <= 32)
