"""`cnnserve train ARCH --data-dir FOLDER --name NAME`: any seed network on a folder of any number of classes,
exported with the folder's labels and served with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnserve.export.pipeline import read_metadata
from cnnserve.metadata import OutputKind
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.servers import channel_to, running_server


def class_names(count: int) -> list[str]:
    """Names whose creation order is not their sorted order, some with spaces and capitals."""
    return [f"{'Kind' if i % 3 == 0 else 'kind'} {(i * 7) % count:02d}" for i in range(count)]


def make_class_folder(root: Path, names: list[str], per_class: int) -> Path:
    """One subfolder per class of small RGB PNGs and JPEGs (13x11): a class colour and a bar at a class position."""
    rng = np.random.default_rng(len(names))
    for index, name in enumerate(names):
        (root / name).mkdir(parents=True)
        colour = rng.integers(40, 256, 3)
        for i in range(per_class):
            pixels = rng.integers(0, 30, (11, 13, 3)).astype(np.uint8)
            pixels[:, index % 13] = colour
            pixels[index % 11, :] = colour // 2
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 3 == 0 else 'png'}")
    return root


# (network, classes, repository name, expected output kind)
RUNS = [
    ("mnist_net", 3, "mnist_net", OutputKind.LOG_PROBABILITIES),
    ("catsdogs", 3, "pets3", OutputKind.LOGITS),
    ("mnist_cnn32", 2, "two", OutputKind.LOGITS),
    ("xo", 37, "glyphs37", OutputKind.LOGITS),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cnnserve) -> dict[str, Path]:
    """Each run of RUNS trained for one epoch through the command line into one repository; name -> run folder."""
    root = tmp_path_factory.mktemp("own-data")
    runs = {}
    for network, classes, name, _ in RUNS:
        folder = make_class_folder(root / "data" / name, class_names(classes), per_class=3 if classes > 3 else 6)
        command = ["train", network, "--data-dir", str(folder), "--out", str(root / "models")]
        command += ["--run-dir", str(root / "runs" / name), "--epochs", "1", "--threads", "1"]
        if name != network:
            command += ["--name", name]
        assert cnnserve(command) == 0
        runs[name] = root / "runs" / name
    return runs


@pytest.fixture(scope="module")
def repository(trained: dict[str, Path]) -> Path:
    return next(iter(trained.values())).parents[1] / "models"


@pytest.mark.parametrize(("network", "classes", "name", "output_kind"), RUNS)
def test_the_exported_model_carries_the_folder_s_sorted_class_names(
    repository: Path, network: str, classes: int, name: str, output_kind: OutputKind
) -> None:
    metadata = read_metadata(repository / name / "1" / "model.onnx")
    assert metadata.labels == tuple(sorted(class_names(classes)))
    assert metadata.name == name
    assert metadata.output_kind is output_kind
    assert metadata.extra["architecture"] == network
    assert "image folder" in metadata.extra["data_source"]


@pytest.mark.parametrize(("network", "classes", "name", "output_kind"), RUNS)
def test_the_run_folder_has_checkpoints_curves_and_a_confusion_matrix_of_the_folder_s_classes(
    trained: dict[str, Path], network: str, classes: int, name: str, output_kind: OutputKind
) -> None:
    run = trained[name]
    for artefact in ("best.pt", "last.pt", "history.json", "curves.png", "confusion_matrix.png"):
        assert (run / artefact).is_file(), artefact
    report = json.loads((run / "evaluation.json").read_text())
    assert (report["model"], report["architecture"]) == (name, network)
    assert np.asarray(report["confusion_matrix"]).shape == (classes, classes)
    assert report["onnx_agrees_with_pytorch"]


def test_the_server_serves_each_model_with_the_folder_s_labels(repository: Path, tmp_path: Path) -> None:
    image = Image.fromarray(np.full((20, 20, 3), 128, np.uint8))
    image.save(tmp_path / "probe.png")
    probe = pb.Image(encoded=(tmp_path / "probe.png").read_bytes())
    with running_server(repository, workdir=tmp_path) as server, channel_to(server) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        for _, classes, name, _ in RUNS:
            labels = sorted(class_names(classes))
            assert list(stub.GetModel(pb.GetModelRequest(name=name), timeout=10).labels) == labels
            answer = stub.Classify(pb.ClassifyRequest(model=name, images=[probe], top_k=classes), timeout=10)
            top = answer.results[0].top
            assert sorted(entry.label for entry in top) == labels
            assert sum(entry.probability for entry in top) == pytest.approx(1.0, abs=1e-4)
            assert all(labels[entry.index] == entry.label for entry in top)


def test_exporting_a_checkpoint_again_keeps_the_run_s_name_and_labels(
    trained: dict[str, Path], repository: Path, cnnserve
) -> None:
    command = ["export", "xo", "--checkpoint", str(trained["glyphs37"] / "best.pt"), "--out", str(repository)]
    assert cnnserve([*command, "--run-dir", str(trained["glyphs37"].parent / "glyphs37-export")]) == 0
    metadata = read_metadata(repository / "glyphs37" / "2" / "model.onnx")
    assert metadata.labels == tuple(sorted(class_names(37)))


def test_a_folder_of_one_class_is_refused_with_a_reason(tmp_path: Path, cnnserve, capsys) -> None:
    folder = make_class_folder(tmp_path / "data", ["only"], per_class=4)
    assert cnnserve(["train", "xo", "--data-dir", str(folder), "--out", str(tmp_path / "models")]) == 2
    assert "at least two classes" in capsys.readouterr().err


def test_a_repository_name_must_be_a_safe_folder_name(tmp_path: Path, cnnserve, capsys) -> None:
    command = ["train", "xo", "--out", str(tmp_path / "models"), "--name", "../escape", "--epochs", "1"]
    assert cnnserve(command) == 2
    assert "model name" in capsys.readouterr().err
