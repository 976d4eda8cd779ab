"""Repository index, load and unload, and per-model configuration over the Open Inference Protocol, with tritonclient.

These change the repository, so they run against a server of their own over a copy of the session's models.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cnnserve.export import render_o, render_x
from tests.servers import ServerProcess, channel_to, running_server

XO_CONFIG = "max_batch_size = 8\npreferred_batch_sizes = [4]\npriority_levels = 2\n"


@pytest.fixture(scope="module")
def repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oip") / "models"
    shutil.copytree(model_repository, root)
    (root / "xo" / "config.toml").write_text(XO_CONFIG)
    return root


@pytest.fixture(scope="module")
def own_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(repository, workdir=tmp_path_factory.mktemp("oip-server")) as process:
        yield process


@pytest.fixture(scope="module")
def client(own_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(own_server.target) as client:
        yield client


def xo_tensor(*pictures: np.ndarray) -> triton.InferInput:
    batch = ((np.stack(pictures).astype(np.float32) / 255.0 - 0.5) / 0.5)[:, np.newaxis]
    infer_input = triton.InferInput("input", list(batch.shape), "FP32")
    return infer_input.set_data_from_numpy(batch)


def index(client: triton.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


def ready_in_index(server: ServerProcess) -> set[tuple[str, str]]:
    """The index with `ready` set, which tritonclient does not expose: through the generated stub."""
    with channel_to(server) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        models = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10).models
    return {(m.name, m.version) for m in models}


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_model_config_reports_the_models_own_settings(client) -> None:
    config = client.get_model_config("xo").config
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.priority_levels == 2 and config.dynamic_batching.default_priority_level == 2
    assert client.get_model_config("mnist_net").config.dynamic_batching.priority_levels == 1


def test_priorities_follow_the_models_levels(client) -> None:
    for priority in (0, 1, 2):
        assert client.infer("xo", [xo_tensor(render_x())], priority=priority).as_numpy("output").argmax() == 1
    error = failure(lambda: client.infer("xo", [xo_tensor(render_x())], priority=3))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_request_larger_than_max_batch_size_is_split_not_refused(client) -> None:
    pictures = [render_x(), render_o()] * 10
    probabilities = client.infer("xo", [xo_tensor(*pictures)]).as_numpy("output")
    assert probabilities.argmax(axis=1).tolist() == [1, 0] * 10


def test_the_index_lists_every_model_with_its_state(client, own_server: ServerProcess) -> None:
    assert index(client) == {("mnist_net", "1"): ("READY", ""), ("xo", "1"): ("READY", "")}
    assert ready_in_index(own_server) == {("mnist_net", "1"), ("xo", "1")}


def test_an_unloaded_model_is_refused_until_it_is_loaded_again(client, own_server: ServerProcess) -> None:
    client.unload_model("xo")
    assert not client.is_model_ready("xo")
    assert index(client)[("xo", "1")] == ("UNAVAILABLE", "not loaded")
    assert ready_in_index(own_server) == {("mnist_net", "1")}
    error = failure(lambda: client.infer("xo", [xo_tensor(render_x())]))
    assert (
        error.status() == "StatusCode.NOT_FOUND" and error.message() == "Request for unknown model: 'xo' is not found"
    )
    assert client.is_server_ready(), "the models still loaded are all ready"

    client.load_model("xo")
    assert client.is_model_ready("xo")
    assert client.infer("xo", [xo_tensor(render_o())]).as_numpy("output").argmax() == 0
    (stats,) = client.get_inference_statistics("xo").model_stats
    assert stats.inference_stats.success.count == 1, "a reloaded model starts its statistics afresh"


def test_loading_picks_up_a_new_version_and_a_broken_one_leaves_it_serving(client, repository: Path) -> None:
    shutil.copytree(repository / "mnist_net" / "1", repository / "mnist_net" / "2")
    client.load_model("mnist_net")
    assert list(client.get_model_metadata("mnist_net").versions) == ["2"]
    assert index(client)[("mnist_net", "1")] == ("UNAVAILABLE", "not loaded")

    (repository / "mnist_net" / "3").mkdir()
    (repository / "mnist_net" / "3" / "model.onnx").write_bytes(b"not an onnx file")
    error = failure(lambda: client.load_model("mnist_net"))
    assert error.status() == "StatusCode.INTERNAL" and "version 3" in error.message()
    state, reason = index(client)[("mnist_net", "3")]
    assert state == "UNAVAILABLE" and reason, "a failed version is UNAVAILABLE with its reason, as in Triton"
    digit = np.zeros((1, 1, 28, 28), np.float32)
    infer_input = triton.InferInput("input", [1, 1, 28, 28], "FP32").set_data_from_numpy(digit)
    assert client.infer("mnist_net", [infer_input]).get_response().model_version == "2"
    assert client.is_model_ready("mnist_net")


def test_load_and_unload_of_unknown_models_are_not_found(client) -> None:
    assert failure(lambda: client.load_model("nope")).status() == "StatusCode.NOT_FOUND"
    assert failure(lambda: client.unload_model("nope")).status() == "StatusCode.NOT_FOUND"


def test_load_parameters_are_refused_with_a_reason(client) -> None:
    error = failure(lambda: client.load_model("xo", config=json.dumps({"max_batch_size": 4})))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "config.toml" in error.message()


def test_repository_changes_can_be_turned_off(model_repository: Path, tmp_path: Path) -> None:
    with (
        running_server(model_repository, "--no-allow-repository-changes", workdir=tmp_path) as server,
        triton.InferenceServerClient(server.target) as client,
    ):
        assert failure(lambda: client.unload_model("xo")).status() == "StatusCode.PERMISSION_DENIED"
        assert failure(lambda: client.load_model("xo")).status() == "StatusCode.PERMISSION_DENIED"
        assert client.is_model_ready("xo")
