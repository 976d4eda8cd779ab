"""The run settings of a real server: fp16 models checked at load, batch buckets warmed before ready, and GetModel
(and Triton's model configuration) saying how each version really runs, across the front-end/engine split too."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from cnnserve.server.model_import import import_model
from cnnserve.server.spec_files import SpecTables
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.plain_models import near_tie_graph, save, write_labels
from tests.servers import ServerProcess, channel_to, running_server


@pytest.fixture(scope="module")
def repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist_net; `near_tie`, whose answers fp16 flips; and `near_tie_lenient`, the same graph with a config that
    accepts any disagreement."""
    root = tmp_path_factory.mktemp("run-settings")
    shutil.copytree(model_repository / "mnist_net", root / "mnist_net")
    folder = tmp_path_factory.mktemp("near-tie")
    labels = write_labels(folder / "labels.txt", 2)
    source = save(near_tie_graph(), folder / "near_tie.onnx")
    for name in ("near_tie", "near_tie_lenient"):
        import_model(source, root, name, labels, SpecTables())
    config = root / "near_tie_lenient" / "config.toml"
    config.write_text("fp16_max_disagreement = 1.0\n" + config.read_text())
    return root


def model_info(server: ServerProcess, name: str) -> pb.ModelInfo:
    with channel_to(server) as channel:
        return pb_grpc.ImageClassifierStub(channel).GetModel(pb.GetModelRequest(name=name), timeout=10)


def top_labels(server: ServerProcess, images: np.ndarray) -> list[str]:
    request = pb.ClassifyRequest(model="mnist_net", images=[pb.Image(encoded=png_bytes(image)) for image in images])
    with channel_to(server) as channel:
        response = pb_grpc.ImageClassifierStub(channel).Classify(request, timeout=30)
    return [result.top[0].label for result in response.results]


@pytest.fixture(scope="module")
def fp16_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Every model in fp16, behind a front-end process (so what the engine learnt at load crosses to it)."""
    workdir = tmp_path_factory.mktemp("fp16-server")
    with running_server(
        repository, "--precision", "fp16", "--frontends", "1", "--required-models", "mnist_net", workdir=workdir
    ) as server:
        yield server


def test_an_fp16_model_that_keeps_its_answers_is_served_and_says_how_close_it_came(
    fp16_server: ServerProcess, server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    info = model_info(fp16_server, "mnist_net")
    assert info.ready and info.runtime.precision == "fp16"
    run = info.versions[0].run
    assert run.precision == "fp16" and run.fp16_top1_agreement >= 0.98
    images = digits[0][:48]
    in_fp16, in_fp32 = top_labels(fp16_server, images), top_labels(server, images)
    assert sum(a == b for a, b in zip(in_fp16, in_fp32, strict=True)) >= 46


def test_an_fp16_model_whose_answers_change_is_refused_with_the_setting_to_change(fp16_server: ServerProcess) -> None:
    refused = model_info(fp16_server, "near_tie")
    assert not refused.ready
    assert refused.versions[0].state == "FAILED"
    assert "fp16_max_disagreement" in refused.versions[0].reason
    assert "64 of 64 generated images" in refused.versions[0].reason


def test_a_models_config_may_accept_more_disagreement_and_sees_what_it_accepted(fp16_server: ServerProcess) -> None:
    lenient = model_info(fp16_server, "near_tie_lenient")
    assert lenient.ready and lenient.runtime.fp16_max_disagreement == 1.0
    assert lenient.versions[0].run.fp16_top1_agreement == 0.0


@pytest.fixture(scope="module")
def bucket_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("bucket-server")
    with running_server(
        repository, "--batch-buckets", "1", "4", "16", "32", "--required-models", "mnist_net", workdir=workdir
    ) as server:
        yield server


def test_every_bucket_is_warmed_before_ready_and_reported(bucket_server: ServerProcess) -> None:
    info = model_info(bucket_server, "mnist_net")
    assert list(info.batching.batch_buckets) == [1, 4, 16, 32]
    run = info.versions[0].run
    assert list(run.batch_buckets) == [1, 4, 16, 32] and list(run.warmed_batch_sizes) == [1, 4, 16, 32]
    assert run.io_binding and not run.cuda_graphs and run.precision == "fp32"
    assert info.runtime.io_binding and info.runtime.cudnn_conv_algo_search == "exhaustive"


def test_padding_rows_reach_no_caller_and_no_statistic(
    bucket_server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    answered = top_labels(bucket_server, images[:5])
    assert len(answered) == 5
    assert sum(label == str(expected) for label, expected in zip(answered, labels[:5], strict=True)) >= 4
    counts = model_info(bucket_server, "mnist_net").versions[0].statistics.batch_size_counts
    assert counts.get(5) == 1 and 16 not in counts, "the batch of 5 ran padded to 16 but counts as 5"


def test_triton_clients_see_how_the_version_runs(bucket_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(bucket_server.target)
    try:
        parameters = client.get_model_config("mnist_net").config.parameters
    finally:
        client.close()
    assert parameters["precision"].string_value == "fp32"
    assert parameters["io_binding"].string_value == "true"
    assert parameters["batch_buckets"].string_value == "[1, 4, 16, 32]"
