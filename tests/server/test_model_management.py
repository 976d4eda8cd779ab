"""Model settings, versions, hot reload, broken models and execution providers, on real server processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import weakref
from pathlib import Path

import grpc
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cnnserve.export import render_o, render_x
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelVersion
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_import import import_model
from cnnserve.server.repository import ModelRepository, disk_signature
from cnnserve.server.settings import ServerSettings
from cnnserve.server.spec_files import SpecTables
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.plain_models import classifier_graph, save, write_labels
from tests.servers import channel_to, running_server, serve_command

X_REQUEST = pb.ClassifyRequest(model="xo", images=[pb.Image(encoded=png_bytes(render_x()))])


@pytest.fixture
def xo_only(model_repository: Path, tmp_path: Path) -> Path:
    """A repository of its own holding a copy of `xo` version 1, free to change."""
    root = tmp_path / "repo"
    shutil.copytree(model_repository / "xo", root / "xo")
    return root


def overall_health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_a_model_config_file_overrides_the_server_defaults(xo_only: Path, tmp_path: Path) -> None:
    (xo_only / "xo" / "config.toml").write_text(
        "max_batch_size = 8\npreferred_batch_sizes = [4, 2]\ninstances = 2\nmax_queue_delay_ms = 1.5\n"
        "intra_op_threads = 1\ngraph_optimization = 'basic'\n"
    )
    with running_server(xo_only, "--max-batch-size", "64", workdir=tmp_path) as server, channel_to(server) as channel:
        info = pb_grpc.ImageClassifierStub(channel).GetModel(pb.GetModelRequest(name="xo"))
    assert info.batching.max_batch_size == 8
    assert list(info.batching.preferred_batch_sizes) == [2, 4]
    assert info.batching.instances == 2
    assert info.batching.max_queue_delay_microseconds == 1500
    assert info.runtime.intra_op_threads == 1 and info.runtime.graph_optimization == "basic"


def test_a_graph_with_a_fixed_batch_of_one_is_served_unbatched(xo_only: Path, tmp_path: Path) -> None:
    path = xo_only / "xo" / "1" / "model.onnx"
    graph = onnx.load(str(path))
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(graph, str(path))
    with running_server(xo_only, workdir=tmp_path) as server, channel_to(server) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        assert stub.GetModel(pb.GetModelRequest(name="xo")).batching.max_batch_size == 1
        two = pb.ClassifyRequest(model="xo", images=[X_REQUEST.images[0], pb.Image(encoded=png_bytes(render_o()))])
        labels = [r.top[0].label for r in stub.Classify(two, timeout=10).results]
        assert labels == ["X", "O"], "a request of two runs as two batches of one"


def test_a_broken_model_fails_alone_says_why_and_keeps_the_server_unready(
    model_repository: Path, xo_only: Path, tmp_path: Path
) -> None:
    (xo_only / "broken" / "1").mkdir(parents=True)
    (xo_only / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (xo_only / "bad_config" / "1").mkdir(parents=True)
    shutil.copy(model_repository / "xo" / "1" / "model.onnx", xo_only / "bad_config" / "1" / "model.onnx")
    (xo_only / "bad_config" / "config.toml").write_text("max_batch_size = 'many'\n")
    with running_server(xo_only, workdir=tmp_path) as server, channel_to(server) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        assert stub.Classify(X_REQUEST, timeout=10).results[0].top[0].label == "X"
        broken = stub.GetModel(pb.GetModelRequest(name="broken"))
        assert not broken.ready and broken.versions[0].state == "FAILED"
        assert "onnx" in broken.versions[0].reason.lower() or "protobuf" in broken.versions[0].reason.lower()
        assert overall_health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as failure:
            stub.Classify(pb.ClassifyRequest(model="broken", images=X_REQUEST.images), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "bad_config" not in [m.name for m in stub.ListModels(pb.ListModelsRequest()).models if m.ready]
        misconfigured = stub.GetModel(pb.GetModelRequest(name="bad_config"))
        assert not misconfigured.ready and misconfigured.versions[0].state == "FAILED"
        assert "config.toml is not a valid model config" in misconfigured.versions[0].reason
    assert "config.toml is not a valid model config" in server.log()


def test_a_model_whose_config_cannot_be_read_keeps_the_server_unready_and_says_why(
    model_repository: Path, xo_only: Path, tmp_path: Path
) -> None:
    """Not left out as if it were not there: a replica missing a model must not report ready."""
    shutil.copytree(model_repository / "xo", xo_only / "misconfigured")
    (xo_only / "misconfigured" / "config.toml").write_text("[output]\nkind = 'logits'\nmax_batch_size = 8\n")
    with running_server(xo_only, workdir=tmp_path) as server, channel_to(server) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        assert overall_health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        (version,) = stub.GetModel(pb.GetModelRequest(name="misconfigured")).versions
        assert version.state == "FAILED" and "max_batch_size" in version.reason
        assert stub.Classify(X_REQUEST, timeout=10).results[0].top[0].label == "X", "the other models serve"
    (tmp_path / "required").mkdir()
    with (
        running_server(xo_only, "--required-models", "xo", workdir=tmp_path / "required") as server,
        channel_to(server) as channel,
    ):
        assert overall_health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_hot_reload_swaps_versions_without_failing_a_request(xo_only: Path, tmp_path: Path) -> None:
    answered_by: list[int] = []
    failures: list[Exception] = []
    with (
        running_server(xo_only, "--repository-poll-seconds", "0.2", workdir=tmp_path) as server,
        channel_to(server) as channel,
    ):
        stub = pb_grpc.ImageClassifierStub(channel)
        stop = threading.Event()

        def keep_classifying() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answered_by.append(stub.Classify(X_REQUEST, timeout=10).version)
                except grpc.RpcError as exc:
                    failures.append(exc)

        callers = [threading.Thread(target=keep_classifying) for _ in range(4)]
        for caller in callers:
            caller.start()
        try:
            wait_until(lambda: 1 in answered_by, "version 1 never answered")
            shutil.copytree(xo_only / "xo" / "1", xo_only / "xo" / "2")
            wait_until(lambda: answered_by and answered_by[-1] == 2, "version 2 never answered")
            (xo_only / "xo" / "3").mkdir()
            (xo_only / "xo" / "3" / "model.onnx").write_bytes(b"corrupt")
            wait_until(
                lambda: any(
                    v.version == 3 and v.state == "FAILED"
                    for v in stub.GetModel(pb.GetModelRequest(name="xo")).versions
                ),
                "version 3 was never tried",
            )
            settled = len(answered_by)
            wait_until(lambda: len(answered_by) > settled + 20, "no answers after the failed reload")
        finally:
            stop.set()
            for caller in callers:
                caller.join()
    assert not failures, f"requests failed during reloads: {failures[:3]}"
    assert answered_by[-1] == 2, "a failed reload keeps the last good version serving"
    assert 1 in answered_by and 2 in answered_by


def test_a_poll_notices_an_edit_of_labels_txt_alone(tmp_path: Path) -> None:
    graph = save(classifier_graph(seed=3), tmp_path / "plain.onnx")
    root = tmp_path / "repo"
    root.mkdir()
    import_model(graph, root, "plain", write_labels(tmp_path / "labels.txt", 4), SpecTables())
    with (
        running_server(root, "--repository-poll-seconds", "0.2", workdir=tmp_path) as server,
        channel_to(server) as channel,
    ):
        stub = pb_grpc.ImageClassifierStub(channel)
        assert list(stub.GetModel(pb.GetModelRequest(name="plain")).labels) == [f"class {i}" for i in range(4)]
        (root / "plain" / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
        wait_until(
            lambda: list(stub.GetModel(pb.GetModelRequest(name="plain")).labels) == ["cat", "dog", "bird", "fish"],
            "the new labels were never served",
        )
        answer = stub.Classify(pb.ClassifyRequest(model="plain", images=X_REQUEST.images), timeout=10)
        assert answer.results[0].top[0].label in {"cat", "dog", "bird", "fish"}


async def test_a_retired_version_is_freed_as_its_reload_or_unload_returns(xo_only: Path) -> None:
    """The replaced or unloaded version's session is gone once `load` or `unload` returns, not at some later
    collection: its native memory then goes back to the system at once (server/memory.py)."""
    settings = ServerSettings.load(None, model_repository=xo_only, execution_provider="cpu")
    repository = ModelRepository(settings, ServerMetrics())
    await repository.load("xo")
    before_reload = weakref.ref(repository.get("xo").loaded.session)
    model_file = xo_only / "xo" / "1" / "model.onnx"
    modified = model_file.stat().st_mtime_ns + 10**9
    os.utime(model_file, ns=(modified, modified))
    await repository.load("xo")
    assert before_reload() is None, "the replaced version's session outlived its reload"
    before_unload = weakref.ref(repository.get("xo").loaded.session)
    await repository.unload("xo")
    assert before_unload() is None, "the unloaded version's session outlived its unload"


async def test_a_version_that_fails_to_load_lets_go_of_its_session_at_once(xo_only: Path) -> None:
    """The session was made before the load failed (here at the labels): the failed version keeps no reference
    to it, so its memory (on CUDA, device memory) is freed before `load` returns, and GetModel still names the
    provider it got."""
    (xo_only / "xo" / "labels.txt").write_text("x\no\nneither\n")
    settings = ServerSettings.load(None, model_repository=xo_only, execution_provider="cpu")
    version = ModelVersion("xo", 1, xo_only / "xo" / "1")
    await version.load(ModelConfig.read(xo_only / "xo"), settings, ServerMetrics())
    assert version.state == "FAILED" and "3 labels" in version.reason, version.reason
    assert version.loaded is None and version.runner is None
    assert version.provider == "CPUExecutionProvider"


@pytest.mark.parametrize("edited", ["labels.txt", "config.toml", "1/model.onnx.data", "1/model.onnx"])
def test_the_disk_signature_covers_every_file_a_model_is_read_from(tmp_path: Path, edited: str) -> None:
    model_dir = tmp_path / "plain"
    for name in ("labels.txt", "config.toml", "1/model.onnx", "1/model.onnx.data"):
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_text("before")
    before = disk_signature(model_dir)
    (model_dir / edited).write_text("after, longer")
    assert disk_signature(model_dir) != before


def test_requiring_cuda_on_a_machine_without_it_refuses_to_start(xo_only: Path, tmp_path: Path) -> None:
    command = serve_command(xo_only, "--execution-provider", "cuda", port_file=tmp_path / "ports.json")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 3
    assert "CUDA was required" in finished.stderr
    assert not (tmp_path / "ports.json").exists()


def test_auto_falls_back_to_the_cpu_and_says_so(server) -> None:
    with channel_to(server) as channel:
        (version,) = pb_grpc.ImageClassifierStub(channel).GetModel(pb.GetModelRequest(name="xo")).versions
    assert version.execution_provider == "CPUExecutionProvider"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert "could not be initialised" in version.provider_fallback_reason
    else:
        assert version.provider_fallback_reason == ""


def test_invalid_settings_stop_the_server_with_the_setting_named(xo_only: Path, tmp_path: Path) -> None:
    command = serve_command(xo_only, "--max-batch-size", "0", port_file=tmp_path / "ports.json")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert "max_batch_size" in finished.stderr


def test_settings_come_from_the_environment_and_a_config_file(xo_only: Path, tmp_path: Path) -> None:
    config = tmp_path / "cnnserve.toml"
    config.write_text("max_batch_size = 16\nmax_queue_size = 77\n")
    with (
        running_server(xo_only, "--config", str(config), workdir=tmp_path, env={"CNNSERVE_MAX_BATCH_SIZE": "12"}) as s,
        channel_to(s) as channel,
    ):
        batching = pb_grpc.ImageClassifierStub(channel).GetModel(pb.GetModelRequest(name="xo")).batching
    assert batching.max_batch_size == 12, "the environment wins over the config file"
    assert batching.max_queue_size == 77


def wait_until(condition, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(message)
