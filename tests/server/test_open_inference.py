"""The Open Inference Protocol, driven by Triton's own Python client (tritonclient) against a real server."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cnnserve.export import get_spec, render_o, render_x
from cnnserve.preprocessing import to_model_input
from cnnserve.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to

SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    with triton.InferenceServerClient(server.target) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server: ServerProcess):
    with channel_to(server) as channel:
        yield channel


def mnist_input(pixels: np.ndarray) -> np.ndarray:
    """Digits (N, 28, 28) uint8 as mnist_net's input (N, 1, 28, 28), preprocessed as its metadata says."""
    return to_model_input(pixels, get_spec("mnist_net").preprocessing)


def xo_input(*pictures: np.ndarray) -> np.ndarray:
    return to_model_input(np.stack(pictures), get_spec("xo").preprocessing)


def tensor(array: np.ndarray, name: str = "input") -> triton.InferInput:
    infer_input = triton.InferInput(name, list(array.shape), "FP32")
    infer_input.set_data_from_numpy(array)
    return infer_input


def classify_pngs(channel: grpc.Channel, model: str, pixels: np.ndarray) -> np.ndarray:
    """The image API's probabilities for PNGs of `pixels`, one row per image."""
    stub = classifier_pb2_grpc.ImageClassifierStub(channel)
    images = [classifier_pb2.Image(encoded=png_bytes(p)) for p in pixels]
    answer = stub.Classify(
        classifier_pb2.ClassifyRequest(model=model, images=images, return_probabilities=True), timeout=10
    )
    return np.array([r.probabilities for r in answer.results], dtype=np.float32)


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_the_server_is_live_and_ready(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_model_ready_is_true_for_a_served_model_and_false_for_an_unknown_one(client) -> None:
    assert client.is_model_ready("xo")
    assert client.is_model_ready("mnist_net", "1")
    assert not client.is_model_ready("mnist_net", "7")
    assert not client.is_model_ready("nope")


def test_server_metadata_names_cnnserve_and_its_extensions(client) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "cnnserve" and metadata.version
    assert {"classification", "model_configuration", "model_repository", "statistics"} <= set(metadata.extensions)


def test_model_metadata_describes_the_input_and_the_probabilities_output(client) -> None:
    metadata = client.get_model_metadata("xo")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("xo", ["1"], "onnxruntime_onnx")
    (model_input,) = metadata.inputs
    (model_output,) = metadata.outputs
    assert (model_input.name, model_input.datatype, list(model_input.shape)) == ("input", "FP32", [-1, 1, 9, 9])
    assert (model_output.name, model_output.datatype, list(model_output.shape)) == ("output", "FP32", [-1, 2])


def test_model_config_is_shaped_like_tritons(client) -> None:
    config = client.get_model_config("mnist_net").config
    assert (config.name, config.platform, config.backend) == ("mnist_net", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 32
    (model_input,) = config.input
    assert model_input.name == "input" and model_input.data_type == triton.model_config_pb2.TYPE_FP32
    assert list(model_input.dims) == [1, 28, 28] and model_input.format == model_input.FORMAT_NCHW
    (model_output,) = config.output
    assert (model_output.name, list(model_output.dims)) == ("output", [10])
    assert model_output.data_type == triton.model_config_pb2.TYPE_FP32
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 10_000
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU


@pytest.mark.parametrize("batch", [1, 8])
def test_raw_tensors_give_the_image_apis_probabilities(client, channel, digits, batch: int) -> None:
    images, _ = digits
    pixels = images[100 : 100 + batch]
    result = client.infer("mnist_net", [tensor(mnist_input(pixels))])
    probabilities = result.as_numpy("output")
    assert probabilities.shape == (batch, 10) and probabilities.dtype == np.float32
    expected = classify_pngs(channel, "mnist_net", pixels)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_typed_contents_give_the_same_answer_as_raw_bytes(client, channel) -> None:
    batch = xo_input(render_x(), render_o())
    raw = client.infer("xo", [tensor(batch)]).as_numpy("output")
    request = service_pb2.ModelInferRequest(model_name="xo", id="typed")
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape)).contents.fp32_contents.extend(
        batch.ravel().tolist()
    )
    answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert answer.id == "typed" and [o.name for o in answer.outputs] == ["output"]
    typed = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(typed, raw, atol=1e-6)
    assert typed.argmax(axis=1).tolist() == [1, 0], "X is label 1, O is label 0"


def test_classification_returns_the_top_k_as_probability_index_label(client, digits) -> None:
    images, _ = digits
    pixels = images[:4]
    outputs = [triton.InferRequestedOutput("output", class_count=3)]
    result = client.infer("mnist_net", [tensor(mnist_input(pixels))], outputs=outputs)
    top = result.as_numpy("output")
    assert top.shape == (4, 3)
    plain = client.infer("mnist_net", [tensor(mnist_input(pixels))]).as_numpy("output")
    for row, entries in zip(plain, top, strict=True):
        parsed = [entry.decode().split(":") for entry in entries]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == np.argsort(-row, kind="stable")[:3].tolist()
        assert [label for _, _, label in parsed] == [str(i) for i in indices]
        assert [float(value) for value, _, _ in parsed] == pytest.approx(row[indices].tolist(), abs=1e-5)


def test_requested_outputs_are_answered_in_order_and_the_request_id_is_echoed(client) -> None:
    outputs = [triton.InferRequestedOutput("output", class_count=1), triton.InferRequestedOutput("output")]
    result = client.infer("xo", [tensor(xo_input(render_x()))], outputs=outputs, request_id="req-42")
    response = result.get_response()
    assert response.id == "req-42" and response.model_name == "xo" and response.model_version == "1"
    assert [(o.datatype, list(o.shape)) for o in response.outputs] == [("BYTES", [1, 1]), ("FP32", [1, 2])]
    assert response.raw_output_contents[0][4:].decode().endswith(":1:X")


def test_statistics_move_after_requests(client) -> None:
    def stats():
        (model_stats,) = client.get_inference_statistics("xo").model_stats
        return model_stats

    before = stats()
    client.infer("xo", [tensor(xo_input(render_x(), render_o(), render_x()))])
    after = stats()
    assert (after.name, after.version) == ("xo", "1")
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(after.inference_stats, part).count > getattr(before.inference_stats, part).count, part
    assert after.inference_count >= before.inference_count + 3
    assert after.execution_count > before.execution_count
    assert after.last_inference > 0
    assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count
    failed = failure(lambda: client.infer("xo", [tensor(np.zeros((1, 1, 8, 8), np.float32))]))
    assert failed.status() == "StatusCode.INVALID_ARGUMENT"
    assert stats().inference_stats.fail.count == after.inference_stats.fail.count + 1


def test_statistics_of_every_model_and_of_an_unknown_one(client) -> None:
    names = {s.name for s in client.get_inference_statistics().model_stats}
    assert names == {"mnist_net", "xo"}
    assert failure(lambda: client.get_inference_statistics("nope")).status() == "StatusCode.NOT_FOUND"


def test_an_unknown_model_is_not_found_with_tritons_message(client) -> None:
    error = failure(lambda: client.infer("nope", [tensor(xo_input(render_x()))]))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "Request for unknown model: 'nope' is not found"
    error = failure(lambda: client.get_model_metadata("xo", "9"))
    assert error.status() == "StatusCode.NOT_FOUND" and "'xo' version 9 is not found" in error.message()


@pytest.mark.parametrize(
    ("infer_input", "message"),
    [
        (tensor(np.zeros((1, 1, 9, 8), np.float32)), "Expected [-1,1,9,9], got [1,1,9,8]"),
        (tensor(np.zeros((1, 9, 9), np.float32)), "Expected [-1,1,9,9], got [1,9,9]"),
        (tensor(np.zeros((1, 1, 9, 9), np.float32), name="image"), "unexpected inference input 'image'"),
        (triton.InferInput("input", [1, 1, 9, 9], "FP64").set_data_from_numpy(np.zeros((1, 1, 9, 9))), "'FP64'"),
    ],
    ids=["shape", "rank", "name", "datatype"],
)
def test_a_mismatched_input_is_invalid_argument(client, infer_input, message: str) -> None:
    error = failure(lambda: client.infer("xo", [infer_input]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()


def test_an_unknown_requested_output_is_invalid_argument(client) -> None:
    error = failure(
        lambda: client.infer("xo", [tensor(xo_input(render_x()))], outputs=[triton.InferRequestedOutput("probs")])
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'probs'" in error.message()


def test_raw_bytes_of_the_wrong_length_are_invalid_argument(channel) -> None:
    request = service_pb2.ModelInferRequest(model_name="xo", raw_input_contents=[b"\0" * 320])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 9, 9])
    with pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "byte size 320" in raised.value.details() and "expecting 324" in raised.value.details()


def set_string_timeout(request: service_pb2.ModelInferRequest) -> None:
    request.parameters["timeout"].string_param = "soon"


def ask_for_top_zero(request: service_pb2.ModelInferRequest) -> None:
    request.outputs.add(name="output").parameters["classification"].int64_param = 0


def ask_for_version_latest(request: service_pb2.ModelInferRequest) -> None:
    request.model_version = "latest"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (set_string_timeout, "parameter 'timeout' must be an integer"),
        (ask_for_top_zero, "parameter 'classification' must be an integer >= 1"),
        (ask_for_version_latest, "model version must be a positive integer or empty"),
    ],
    ids=["timeout", "classification", "version"],
)
def test_malformed_request_fields_are_invalid_argument(channel, edit, message: str) -> None:
    batch = xo_input(render_x())
    request = service_pb2.ModelInferRequest(model_name="xo", raw_input_contents=[batch.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    edit(request)
    with pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


def test_a_timeout_shorter_than_the_queue_delay_is_deadline_exceeded(client) -> None:
    """The session server waits 10 ms for company; a 1 µs queue timeout runs out first and is never computed."""
    error = failure(lambda: client.infer("xo", [tensor(xo_input(render_x()))], timeout=1))
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.infer("xo", [tensor(xo_input(render_x()))], timeout=10_000_000).as_numpy("output").shape == (1, 2)


def test_priority_is_read_and_checked_against_the_models_levels(client) -> None:
    """The session server's models have one priority level: 1 is accepted, 2 is out of range."""
    assert client.infer("xo", [tensor(xo_input(render_o()))], priority=1).as_numpy("output").argmax() == 0
    error = failure(lambda: client.infer("xo", [tensor(xo_input(render_o()))], priority=2))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "priority" in error.message()


def test_rpcs_cnnserve_does_not_implement_answer_unimplemented(client) -> None:
    assert failure(client.get_cuda_shared_memory_status).status() == "StatusCode.UNIMPLEMENTED"
    assert failure(client.get_trace_settings).status() == "StatusCode.UNIMPLEMENTED"


def test_health_and_reflection_know_the_service(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    assert SERVICE in {s.name for answer in answers for s in answer.list_services_response.service}


def test_the_stream_answers_each_request_through_the_callback(client) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("xo", [tensor(xo_input(render_x()))], request_id="a")
        client.async_stream_infer("nope", [tensor(xo_input(render_x()))], request_id="b")
        first, second = answers.get(timeout=10), answers.get(timeout=10)
    finally:
        client.stop_stream()
    result, error = first
    assert error is None and result.get_response().id == "a" and result.as_numpy("output").argmax() == 1
    result, error = second
    assert result is None and "Request for unknown model: 'nope' is not found" in error.message()


async def test_the_async_stream_answers_in_order_with_failures_inline(server: ServerProcess) -> None:
    pictures = [render_x(), render_o(), render_x(), render_o(), render_o()]

    async def requests():
        for position, picture in enumerate(pictures):
            yield {"model_name": "xo", "inputs": [tensor(xo_input(picture))], "request_id": str(position)}
        yield {"model_name": "xo", "inputs": [tensor(np.zeros((1, 1, 2, 2), np.float32))], "request_id": "bad"}
        yield {"model_name": "xo", "inputs": [tensor(xo_input(render_x()))], "request_id": "after"}

    async with triton_aio.InferenceServerClient(server.target) as client:
        answers = [answer async for answer in client.stream_infer(requests(), stream_timeout=30)]
        single = await client.infer("xo", [tensor(xo_input(render_o()))])
    assert single.as_numpy("output").argmax() == 0
    assert len(answers) == len(pictures) + 2
    succeeded = [result for result, error in answers if error is None]
    assert [r.get_response().id for r in succeeded] == [*map(str, range(len(pictures))), "after"]
    assert [int(r.as_numpy("output").argmax()) for r in succeeded] == [1, 0, 1, 0, 0, 1]
    result, error = answers[len(pictures)]
    assert result is None and "unexpected shape for input 'input'" in error.message()
