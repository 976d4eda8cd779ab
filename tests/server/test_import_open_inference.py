"""ModelInfer on imported models, driven by Triton's own client: the input is the one ModelMetadata describes.

An NHWC float graph whose input is "input_1" and an NHWC uint8 graph whose input is "images", imported with
`cnnserve import` and served by a real server. A client that builds its request from the model's metadata alone
(name, datatype, shape) gets what ONNX Runtime gives on the same tensor; a request with another name or data type
is INVALID_ARGUMENT and says what the model takes. Raw bytes, typed contents (`uint_contents` for UINT8, as
KServe's protocol has it) and system shared memory all carry the data type's own item size.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cnnserve.metadata import OutputKind
from cnnserve.server.model_import import import_model
from cnnserve.server.postprocess import to_probabilities
from cnnserve.server.spec_files import SpecTables
from tests.plain_models import classifier_graph, save, write_labels
from tests.servers import ServerProcess, channel_to, running_server

TOLERANCE = 1e-5
FLOAT_MODEL = "keras_nhwc"
UINT8_MODEL = "tflite_uint8"
NUMPY_TYPES = {"FP32": np.float32, "UINT8": np.uint8}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = tmp_path_factory.mktemp("graphs")
    root = tmp_path_factory.mktemp("imported")
    labels = write_labels(files / "labels.txt", 4)
    graphs = {
        FLOAT_MODEL: (classifier_graph(layout="NHWC", size=(16, 20), input_name="input_1", seed=1), {"preset": "unit"}),
        UINT8_MODEL: (classifier_graph(layout="NHWC", dtype="uint8", size=(16, 16), seed=2), {}),
    }
    for name, (graph, preprocessing) in graphs.items():
        model_file = save(graph, files / f"{name}.onnx")
        import_model(model_file, root, name, labels, SpecTables.model_validate({"preprocessing": preprocessing}))
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(repository, "--max-queue-delay-ms", "2", workdir=tmp_path_factory.mktemp("server")) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.target) as client:
        yield client
        client.unregister_system_shared_memory()


@pytest.fixture(scope="module")
def inference(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with channel_to(server) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def described_input(client: triton.InferenceServerClient, model: str) -> tuple[str, str, list[int]]:
    """The model's input as ModelMetadata describes it: name, datatype and shape (-1 for the batch)."""
    (tensor,) = client.get_model_metadata(model).inputs
    return tensor.name, tensor.datatype, list(tensor.shape)


def random_batch(datatype: str, shape: list[int], rows: int, seed: int = 0) -> np.ndarray:
    """`rows` rows of the model's input: pixels 0..255 for UINT8, unit-scaled pixels for FP32."""
    pixels = np.random.default_rng(seed).integers(0, 256, (rows, *shape[1:]), dtype=np.uint8)
    return pixels if datatype == "UINT8" else (pixels / 255.0).astype(np.float32)


def onnx_runtime(repository: Path, model: str, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime's probabilities for the very tensor the client sends (the graphs output logits)."""
    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    return to_probabilities(logits, OutputKind.LOGITS)


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


@pytest.mark.parametrize(
    ("model", "described"),
    [(FLOAT_MODEL, ("input_1", "FP32", [-1, 16, 20, 3])), (UINT8_MODEL, ("images", "UINT8", [-1, 16, 16, 3]))],
    ids=["nhwc-float", "uint8"],
)
def test_an_input_built_from_the_metadata_alone_gets_onnx_runtimes_answer(
    client, repository: Path, model: str, described: tuple[str, str, list[int]]
) -> None:
    name, datatype, shape = described_input(client, model)
    assert (name, datatype, shape) == described
    batch = random_batch(datatype, shape, rows=3)
    infer_input = triton.InferInput(name, list(batch.shape), datatype)
    infer_input.set_data_from_numpy(batch)
    probabilities = client.infer(model, [infer_input]).as_numpy("output")
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities, onnx_runtime(repository, model, batch), atol=TOLERANCE)


@pytest.mark.parametrize(("model", "field"), [(FLOAT_MODEL, "fp32_contents"), (UINT8_MODEL, "uint_contents")])
def test_typed_contents_give_the_same_answer_as_raw_bytes(client, inference, model: str, field: str) -> None:
    name, datatype, shape = described_input(client, model)
    batch = random_batch(datatype, shape, rows=2, seed=1)
    infer_input = triton.InferInput(name, list(batch.shape), datatype)
    infer_input.set_data_from_numpy(batch)
    raw = client.infer(model, [infer_input]).as_numpy("output")
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(batch.shape))
    getattr(tensor.contents, field).extend(batch.ravel().tolist())
    answer = inference.ModelInfer(request, timeout=10)
    typed = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(2, 4)
    np.testing.assert_allclose(typed, raw, atol=1e-6)


def test_the_uint8_model_reads_its_input_from_shared_memory_a_byte_per_value(client, repository: Path) -> None:
    name, datatype, shape = described_input(client, UINT8_MODEL)
    batch = random_batch(datatype, shape, rows=2, seed=2)
    region, key = f"region-{uuid.uuid4().hex[:8]}", f"/cnnserve_test_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(region, key, batch.nbytes)
    try:
        shm.set_shared_memory_region(handle, [batch])
        client.register_system_shared_memory(region, key, batch.nbytes)
        infer_input = triton.InferInput(name, list(batch.shape), datatype)
        infer_input.set_shared_memory(region, batch.nbytes)
        probabilities = client.infer(UINT8_MODEL, [infer_input]).as_numpy("output")
        np.testing.assert_allclose(probabilities, onnx_runtime(repository, UINT8_MODEL, batch), atol=TOLERANCE)
        infer_input.set_shared_memory(region, 4 * batch.size)
        error = failure(lambda: client.infer(UINT8_MODEL, [infer_input]))
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"expecting {batch.nbytes} (UINT8 [2,16,16,3])" in error.message()
    finally:
        client.unregister_system_shared_memory(region)
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize(
    ("model", "sent", "message"),
    [
        (FLOAT_MODEL, ("input", "FP32"), "'input' for model 'keras_nhwc'; its input is 'input_1' (FP32 [-1,16,20,3])"),
        (
            UINT8_MODEL,
            ("input", "UINT8"),
            "'input' for model 'tflite_uint8'; its input is 'images' (UINT8 [-1,16,16,3])",
        ),
        (UINT8_MODEL, ("images", "FP32"), "data-type is 'FP32', but model 'tflite_uint8' expects 'UINT8'"),
        (FLOAT_MODEL, ("input_1", "UINT8"), "data-type is 'UINT8', but model 'keras_nhwc' expects 'FP32'"),
    ],
    ids=["float-name", "uint8-name", "float-to-uint8", "uint8-to-float"],
)
def test_another_name_or_data_type_is_invalid_argument_saying_what_the_model_takes(
    client, model: str, sent: tuple[str, str], message: str
) -> None:
    _, _, shape = described_input(client, model)
    name, datatype = sent
    infer_input = triton.InferInput(name, [1, *shape[1:]], datatype)
    infer_input.set_data_from_numpy(np.zeros((1, *shape[1:]), NUMPY_TYPES[datatype]))
    error = failure(lambda: client.infer(model, [infer_input]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()


def uint8_request(client, **contents: list) -> service_pb2.ModelInferRequest:
    name, datatype, shape = described_input(client, UINT8_MODEL)
    request = service_pb2.ModelInferRequest(model_name=UINT8_MODEL)
    request.inputs.add(name=name, datatype=datatype, shape=[1, *shape[1:]], contents=contents)
    return request


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ({"bytes_contents": [bytes(16 * 16 * 3)]}, "send its values in contents.uint_contents"),
        ({"uint_contents": [256] * (16 * 16 * 3)}, "must be 0..255, got 256"),
        ({"uint_contents": [0] * 5}, "unexpected number of UINT8 values 5"),
    ],
    ids=["bytes-contents", "out-of-range", "count"],
)
def test_typed_uint8_values_travel_in_uint_contents_within_0_to_255(
    client, inference, contents: dict, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        inference.ModelInfer(uint8_request(client, **contents), timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
