"""Training and exporting the way the command line and other packages' tests use it."""

import io
import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from cnnserve.export import build_model, export_checkpoint, get_spec, load_digit_images, render_o, render_x
from cnnserve.export.pipeline import TrainSettings, read_metadata, train_and_export
from cnnserve.export.repository import add_version
from cnnserve.export.training import TensorSet, fit
from cnnserve.metadata import ModelMetadata
from cnnserve.preprocessing import fit_to_model, to_model_input
from cnnserve.repository_layout import model_versions


def _classify_png(model_path, png: bytes) -> str:
    """What the server does: decode, convert, resize, scale and normalise, run, take the best label."""
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    metadata = ModelMetadata.from_metadata_props(session.get_modelmeta().custom_metadata_map)
    pre = metadata.preprocessing
    pixels = fit_to_model(Image.open(io.BytesIO(png)), pre)
    (scores,) = session.run(None, {"input": to_model_input(pixels[np.newaxis], pre)})
    return metadata.labels[int(scores[0].argmax())]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_generated_x_and_o_sent_as_png_are_classified_correctly(xo_run):
    assert _classify_png(xo_run.model_path, _png(render_x(stroke=1.5))) == "X"
    assert _classify_png(xo_run.model_path, _png(render_o(stroke=1.5))) == "O"


def test_training_leaves_checkpoints_history_plots_and_report_in_the_run_folder(xo_run, workspace):
    run_dir = workspace / "runs" / "xo"
    for name in ("best.pt", "last.pt", "history.json", "curves.png", "evaluation.json", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    assert "confusion matrix" in (run_dir / "evaluation.txt").read_text()


def test_exporting_a_checkpoint_adds_version_2_without_touching_version_1(xo_run, workspace, capsys, cnnserve):
    models = workspace / "models"
    before = xo_run.model_path.read_bytes()
    code = cnnserve(
        [
            "export",
            "xo",
            "--checkpoint",
            str(workspace / "runs" / "xo" / "best.pt"),
            "--out",
            str(models),
            "--run-dir",
            str(workspace / "runs" / "xo-export"),
        ]
    )
    assert code == 0
    assert sorted(model_versions(models / "xo"))[:2] == [1, 2]
    assert xo_run.model_path.read_bytes() == before
    assert read_metadata(models / "xo" / "2" / "model.onnx").labels == ("O", "X")
    assert "test accuracy" in capsys.readouterr().out


def test_an_int8_variant_is_stored_as_its_own_model_and_measured_against_fp32(xo_run, workspace):
    outcome = export_checkpoint(
        workspace / "runs" / "xo" / "best.pt",
        workspace / "int8-models",
        run_dir=workspace / "runs" / "xo-int8",
        int8=True,
    )
    int8_path = workspace / "int8-models" / "xo_int8" / "1" / "model.onnx"
    assert read_metadata(int8_path).name == "xo_int8"
    comparison = outcome.report.int8
    assert comparison["agreement"] >= 0.95
    assert comparison["int8_accuracy"] >= comparison["fp32_accuracy"] - 0.05
    assert comparison["int8_ms_per_batch"] > 0


def test_add_version_counts_up_from_the_highest_existing_version(tmp_path):
    (tmp_path / "m" / "7").mkdir(parents=True)
    assert add_version(tmp_path, "m", b"onnx").name == "8"
    assert add_version(tmp_path, "m", b"onnx").name == "9"
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_build_model_returns_the_model_file_and_keeps_run_artefacts_out_of_the_repository(tmp_path):
    path = build_model("mnist_net", tmp_path / "models", epochs=2)
    assert path == tmp_path / "models" / "mnist_net" / "1" / "model.onnx"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]
    metadata = read_metadata(path)
    assert metadata.output_kind.value == "log_probabilities"
    assert metadata.preprocessing == get_spec("mnist_net").preprocessing
    images, _ = load_digit_images()
    assert _classify_png(path, _png(images[0])) in metadata.labels


def test_train_command_line_resumes_from_its_last_checkpoint(tmp_path, cnnserve):
    args = ["train", "xo", "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "run")]
    assert cnnserve([*args, "--epochs", "1"]) == 0
    assert cnnserve([*args, "--epochs", "3", "--resume", str(tmp_path / "run" / "last.pt")]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert sorted(model_versions(tmp_path / "models" / "xo")) == [1, 2]


def test_the_same_seed_repeats_a_run_exactly(tmp_path):
    spec = get_spec("mnist_net")
    data = TensorSet(torch.randn(96, 1, 28, 28), torch.arange(96) % 10)

    def run(folder):
        torch.manual_seed(7)
        model = spec.create()
        result = fit(model, spec.recipe, data, data, tmp_path / folder, seed=7, args={"model": "mnist_net"})
        return [record.train_loss for record in result.history], model.fc2.weight.detach()

    (losses_a, weights_a), (losses_b, weights_b) = run("a"), run("b")
    assert losses_a == losses_b
    assert torch.equal(weights_a, weights_b)


def test_xo_reaches_99_percent_on_held_out_generated_glyphs(xo_run):
    assert xo_run.report.pytorch_accuracy >= 0.99
    assert xo_run.report.test_images > 500


@pytest.mark.slow
def test_mnist_convnet_reaches_97_percent_on_the_digits_test_split(tmp_path):
    outcome = train_and_export(
        TrainSettings(model="mnist_convnet", out_dir=tmp_path / "models", run_dir=tmp_path / "run")
    )
    assert outcome.report.pytorch_accuracy >= 0.97
    assert outcome.report.onnx_accuracy == outcome.report.pytorch_accuracy
