"""Faults inside the server: corrupt model files, and a model that fails at inference for some inputs.

The repository holds `xo`, three corrupt models, and `poisoned`: a 9x9 grayscale classifier built here with
onnx.helper whose graph indexes a two-element table with the largest input value, so any input holding the
marker value 1000 makes ONNX Runtime raise while ordinary inputs (-1..1 after preprocessing) are classified.
`poisoned` batches up to 4 images and always waits up to 5 s for them (adaptive delay off), so which requests
share a batch is decided by how many images are sent, not by timing.
"""

from __future__ import annotations

import shutil
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2 as ipb
from tritonclient.grpc import service_pb2_grpc as ipb_grpc

from cnnserve.metadata import METADATA_KEY, ColorMode, ModelMetadata, OutputKind, Preprocessing
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.reliability.conftest import X_PNG, assert_still_serving, classify_x
from tests.servers import ServerProcess, channel_to, running_server

MARKER = 1000.0
WEIGHTS = np.random.default_rng(7).normal(size=(81, 2)).astype(np.float32)
CORRUPT_MODELS = ("garbage", "truncated", "no_metadata")


def poisoned_model() -> onnx.ModelProto:
    """output = flatten(input) @ WEIGHTS + table[int(max(input))], with a table of two zeros.

    Gather refuses an index outside -2..1, so a batch whose largest value is the marker fails as a whole.
    """
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        helper.make_node("ReduceMax", ["input"], ["largest"], keepdims=0),
        helper.make_node("Cast", ["largest"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["offset"], axis=0),
        helper.make_node("Add", ["logits", "offset"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "poisoned",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 9, 9])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(WEIGHTS, "weights"),
            numpy_helper.from_array(np.zeros(2, np.float32), "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    metadata = ModelMetadata(
        name="poisoned",
        labels=("left", "right"),
        preprocessing=Preprocessing(color=ColorMode.GRAYSCALE, height=9, width=9, mean=(0.5,), std=(0.5,)),
        output_kind=OutputKind.LOGITS,
        description="fails at inference for inputs holding the marker value",
    )
    helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
    onnx.checker.check_model(model)
    return model


def expected_probabilities(inputs: np.ndarray) -> np.ndarray:
    logits = inputs.reshape(len(inputs), 81) @ WEIGHTS
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def faulty_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faulty")
    shutil.copytree(model_repository / "xo", root / "xo")
    for name in (*CORRUPT_MODELS, "poisoned"):
        (root / name / "1").mkdir(parents=True)
    xo_bytes = (model_repository / "xo" / "1" / "model.onnx").read_bytes()
    (root / "garbage" / "1" / "model.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "truncated" / "1" / "model.onnx").write_bytes(xo_bytes[: len(xo_bytes) // 2])
    stripped = onnx.load_from_string(xo_bytes)
    del stripped.metadata_props[:]
    onnx.save(stripped, str(root / "no_metadata" / "1" / "model.onnx"))
    onnx.save(poisoned_model(), str(root / "poisoned" / "1" / "model.onnx"))
    (root / "poisoned" / "config.toml").write_text(
        "max_batch_size = 4\nmax_queue_delay_ms = 5000\nadaptive_queue_delay = false\n"
    )
    return root


@pytest.fixture(scope="module")
def faulty_server(faulty_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(faulty_repository, workdir=tmp_path_factory.mktemp("faulty-server")) as server:
        yield server


@pytest.fixture(scope="module")
def stub(faulty_server: ServerProcess):
    with channel_to(faulty_server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def inputs(*poisoned: bool, seed: int = 0) -> np.ndarray:
    """Ordinary preprocessed inputs in -1..1, one per flag, with the marker in those flagged poisoned."""
    batch = np.random.default_rng(seed).uniform(-1, 1, (len(poisoned), 1, 9, 9)).astype(np.float32)
    for row, is_poisoned in enumerate(poisoned):
        if is_poisoned:
            batch[row, 0, 4, 4] = MARKER
    return batch


def request_of(batch: np.ndarray) -> pb.ClassifyRequest:
    images = [pb.Image(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 9, 9], data=row.tobytes())) for row in batch]
    return pb.ClassifyRequest(model="poisoned", images=images, return_probabilities=True, top_k=2)


def infer_request_of(batch: np.ndarray) -> ipb.ModelInferRequest:
    """The same images as one Open Inference Protocol ModelInfer request (raw FP32, shape [n, 1, 9, 9])."""
    request = ipb.ModelInferRequest(model_name="poisoned")
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return request


def probabilities(answer: pb.ClassifyResponse) -> np.ndarray:
    return np.array([result.probabilities for result in answer.results], np.float32)


def failure_of(future: Future) -> grpc.RpcError:
    error = future.exception(timeout=30)
    assert isinstance(error, grpc.RpcError), "this request was expected to fail"
    return error


def test_ordinary_inputs_are_classified_by_the_poisoned_model(stub) -> None:
    batch = inputs(False, False, False, False)
    answer = stub.Classify(request_of(batch), timeout=30)
    np.testing.assert_allclose(probabilities(answer), expected_probabilities(batch), atol=1e-5)


def test_a_poisoned_request_fails_with_internal_and_a_message(faulty_server, stub) -> None:
    failure = failure_of(stub.Classify.future(request_of(inputs(False, True, False, False)), timeout=30))
    assert failure.code() == grpc.StatusCode.INTERNAL
    assert "model poisoned failed on a batch of 4 images" in failure.details()
    assert "Gather" in failure.details() or "indices" in failure.details()
    assert_still_serving(faulty_server, stub)


def test_requests_batched_with_a_poisoned_one_fail_with_it(stub) -> None:
    batch = inputs(True, False, False, False, seed=1)
    calls = [stub.Classify.future(request_of(batch[i : i + 1]), timeout=30) for i in range(4)]
    failures = [failure_of(call) for call in calls]
    assert {f.code() for f in failures} == {grpc.StatusCode.INTERNAL}
    assert len({f.details() for f in failures}) == 1, "every caller of the batch gets the same error"
    assert "failed on a batch of 4 images" in failures[0].details()


def test_a_failed_batch_fails_only_itself_while_other_batches_and_models_keep_answering(stub) -> None:
    poisoned_batch = stub.Classify.future(request_of(inputs(True, False, False, False, seed=2)), timeout=30)
    good = inputs(False, False, False, False, seed=3)
    good_calls = [stub.Classify.future(request_of(good[i : i + 1]), timeout=30) for i in range(4)]
    xo_calls = [
        stub.Classify.future(pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=png)]), timeout=30)
        for png in (X_PNG, X_PNG)
    ]
    assert failure_of(poisoned_batch).code() == grpc.StatusCode.INTERNAL
    answered = np.concatenate([probabilities(call.result()) for call in good_calls])
    np.testing.assert_allclose(answered, expected_probabilities(good), atol=1e-5)
    assert [call.result().results[0].top[0].label for call in xo_calls] == ["X", "X"]


def test_a_poisoned_batch_through_the_open_inference_protocol_fails_the_same_way(faulty_server) -> None:
    request = infer_request_of(inputs(False, False, True, False, seed=4))
    with channel_to(faulty_server) as channel, pytest.raises(grpc.RpcError) as raised:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "failed on a batch of 4 images" in raised.value.details()


@pytest.mark.parametrize("name", CORRUPT_MODELS)
def test_a_corrupt_model_fails_alone_and_says_why(faulty_server, stub, name: str) -> None:
    info = stub.GetModel(pb.GetModelRequest(name=name))
    assert not info.ready and info.versions[0].state == "FAILED"
    assert info.versions[0].reason, "a failed model says why"
    with pytest.raises(grpc.RpcError) as refused:
        stub.Classify(pb.ClassifyRequest(model=name, images=[pb.Image(encoded=X_PNG)]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert classify_x(stub) == "X"


def test_the_server_survives_every_kind_of_fault_and_still_answers_correctly(faulty_server, stub) -> None:
    """Self-contained: inflicts one of each fault here (a poisoned batch over either API, calls to every corrupt
    model), whatever ran before, then checks that every healthy model still answers, and answers right."""
    poisoned = inputs(False, True, False, False, seed=5)
    with pytest.raises(grpc.RpcError) as classify_failed:
        stub.Classify(request_of(poisoned), timeout=30)
    assert classify_failed.value.code() == grpc.StatusCode.INTERNAL
    with channel_to(faulty_server) as channel, pytest.raises(grpc.RpcError) as infer_failed:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request_of(poisoned), timeout=30)
    assert infer_failed.value.code() == grpc.StatusCode.INTERNAL
    for name in CORRUPT_MODELS:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(pb.ClassifyRequest(model=name, images=[pb.Image(encoded=X_PNG)]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name

    assert_still_serving(faulty_server, stub)
    batch = inputs(False, False, False, False, seed=6)
    np.testing.assert_allclose(
        probabilities(stub.Classify(request_of(batch), timeout=30)), expected_probabilities(batch), atol=1e-5
    )
    states = {name: stub.GetModel(pb.GetModelRequest(name=name)).versions[0].state for name in CORRUPT_MODELS}
    assert set(states.values()) == {"FAILED"}, states
    assert "Traceback" not in faulty_server.log()
