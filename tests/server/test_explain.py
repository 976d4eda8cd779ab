"""Explain over real gRPC: saliency maps of models whose right answer is known, served by a real server.

`xo`'s glyphs are white strokes on black, so what the model looked at is the strokes; `bars` is a two-class
network (mnist_convnet's) trained here on bars at random positions, so what it looked at is the bar; `xo_random`
is `xo` with its weights replaced by noise, which a saliency method that ignores the model would not notice.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from cnnserve.export import build_model, render_o, render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.servers import ServerProcess, channel_to, metric, running_server, wait_until

BAR_SIZE = 28


def bar(vertical: bool, top: int, left: int) -> np.ndarray:
    """A 28x28 black picture with one white bar, 3 pixels wide and 11 long, its corner at (top, left)."""
    picture = np.zeros((BAR_SIZE, BAR_SIZE), np.uint8)
    height, width = (11, 3) if vertical else (3, 11)
    picture[top : top + height, left : left + width] = 255
    return picture


def write_bars(folder: Path, per_class: int = 150, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, vertical in (("horizontal", False), ("vertical", True)):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            top = int(rng.integers(0, BAR_SIZE - (11 if vertical else 3)))
            left = int(rng.integers(0, BAR_SIZE - (3 if vertical else 11)))
            Image.fromarray(bar(vertical, top, left)).save(folder / name / f"{i}.png")


def randomised_copy(model_file: Path, target: Path, seed: int = 7) -> None:
    """The same graph and metadata with every float weight replaced by noise of the same scale."""
    model = onnx.load(str(model_file))
    rng = np.random.default_rng(seed)
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype == np.float32 and weights.size > 1:
            noise = rng.normal(0, float(weights.std()) or 1.0, weights.shape).astype(np.float32)
            initializer.CopyFrom(numpy_helper.from_array(noise, initializer.name))
    target.parent.mkdir(parents=True)
    onnx.save(model, str(target))


@pytest.fixture(scope="module")
def explain_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain-models")
    shutil.copytree(model_repository / "xo", root / "xo")
    randomised_copy(model_repository / "xo" / "1" / "model.onnx", root / "xo_random" / "1" / "model.onnx")
    bars = tmp_path_factory.mktemp("bars-data")
    write_bars(bars)
    trained = tmp_path_factory.mktemp("bars-model")
    build_model("mnist_convnet", trained, data_dir=bars, epochs=5)
    (built,) = trained.iterdir()
    shutil.copytree(built, root / "bars")
    with_activations = tmp_path_factory.mktemp("with-activations")
    build_model("mnist_net", with_activations, activations=True)  # as the session's mnist_net, plus activations
    shutil.copytree(model_repository / "mnist_net", root / "mnist_net")
    shutil.copytree(with_activations / "mnist_net", root / "mnist_layers")
    return root


@pytest.fixture(scope="module")
def explaining_server(explain_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(explain_repository, workdir=tmp_path_factory.mktemp("explain-server")) as process:
        yield process


@pytest.fixture(scope="module")
def stub(explaining_server: ServerProcess):
    with channel_to(explaining_server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def pixels(picture: np.ndarray) -> pb.Image:
    return pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=list(picture.shape), data=picture.tobytes()))


def saliency_of(response: pb.ExplainResponse) -> np.ndarray:
    return np.frombuffer(response.saliency.data, np.float32).reshape(tuple(response.saliency.shape))


def share_on(mask: np.ndarray, saliency: np.ndarray) -> float:
    """The share of the map's positive mass that lies on `mask`."""
    positive = np.clip(saliency, 0, None)
    return float(positive[mask].sum() / positive.sum())


def explain(stub, model: str, image: pb.Image, timeout: float = 60, **fields) -> pb.ExplainResponse:
    return stub.Explain(pb.ExplainRequest(model=model, image=image, **fields), timeout=timeout)


@pytest.mark.parametrize(("glyph", "label"), [(render_x(), "X"), (render_o(), "O")], ids=["X", "O"])
def test_occlusion_puts_most_of_xo_s_map_on_the_strokes(stub, glyph, label) -> None:
    response = explain(stub, "xo", pixels(glyph))
    strokes = glyph > 0
    assert response.label == label and response.method == pb.OCCLUSION
    assert saliency_of(response).shape == glyph.shape
    share = share_on(strokes, saliency_of(response))
    assert share >= 0.8, f"{share:.2f} of the occlusion map on strokes covering {strokes.mean():.2f} of the glyph"


@pytest.mark.parametrize("glyph", [render_x(), render_o()], ids=["X", "O"])
def test_rise_puts_most_of_xo_s_map_on_the_strokes(stub, glyph) -> None:
    options = pb.RiseOptions(masks=500, seed=3)  # a cell per pixel by default on a glyph this small
    response = explain(stub, "xo", pixels(glyph), method=pb.RISE, rise=options)
    strokes = glyph > 0
    share = share_on(strokes, saliency_of(response))
    assert share >= 0.5, f"{share:.2f} of the RISE map on strokes covering {strokes.mean():.2f} of the glyph"
    assert response.rows == 501 and response.method == pb.RISE


@pytest.mark.parametrize(("vertical", "top", "left"), [(True, 2, 20), (False, 18, 3), (True, 12, 6)])
@pytest.mark.parametrize("method", [pb.OCCLUSION, pb.RISE])
def test_the_peak_of_the_map_falls_inside_the_bar_wherever_it_is(stub, method, vertical, top, left) -> None:
    picture = bar(vertical, top, left)
    response = explain(stub, "bars", pixels(picture), method=method, rise=pb.RiseOptions(masks=800, seed=1))
    assert response.label == ("vertical" if vertical else "horizontal")
    saliency = saliency_of(response)
    peak = np.unravel_index(np.argmax(saliency), saliency.shape)
    inside = np.argwhere(picture > 0)
    distance = np.abs(inside - np.array(peak)).max(axis=1).min()
    assert distance <= 1, f"peak at {peak}, the bar spans {inside.min(0)}..{inside.max(0)}"


def test_a_model_with_random_weights_gets_a_different_map(stub) -> None:
    glyph = render_x()
    trained = saliency_of(explain(stub, "xo", pixels(glyph), label="X"))
    randomised = saliency_of(explain(stub, "xo_random", pixels(glyph), label="X"))
    correlation = np.corrcoef(trained.ravel(), randomised.ravel())[0, 1]
    assert not np.allclose(trained, randomised, atol=1e-3)
    assert correlation < 0.8, f"maps of a trained and a randomised model correlate at {correlation:.2f}"


def test_the_map_has_the_size_of_the_picture_sent_and_the_overlay_is_a_png(stub) -> None:
    large = np.kron(render_x(), np.ones((7, 5), np.uint8))  # 63 x 45: scaled down to work, mapped back
    response = explain(stub, "xo", pb.Image(encoded=png_bytes(large)), overlay_png=True)
    assert saliency_of(response).shape == large.shape
    overlay = Image.open(io.BytesIO(response.overlay_png))
    assert overlay.format == "PNG" and overlay.mode == "RGB" and min(overlay.size) >= 256
    assert response.label == "X" and 0.5 < response.probability <= 1.0


def test_a_label_other_than_the_top_one_can_be_explained(stub) -> None:
    response = explain(stub, "xo", pixels(render_x()), label="O")
    assert response.label == "O" and response.index == 0 and response.probability < 0.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"label": "Y"}, r"no label 'Y'; its labels are: O, X"),
        ({"method": pb.RISE, "rise": pb.RiseOptions(masks=20_000)}, r"needs 20001 forward passes"),
        ({"method": pb.RISE, "max_rows": 100}, r"over this call's limit of 100"),
        ({"max_rows": 1_000_000}, r"max_rows must be between 0"),
        ({"occlusion": pb.OcclusionOptions(patch=50)}, r"at most the picture's shorter side"),
        ({"method": pb.RISE, "rise": pb.RiseOptions(keep=1.5)}, r"0 < keep < 1"),
    ],
)
def test_impossible_explanations_are_refused_with_what_to_change(stub, fields, message) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        explain(stub, "xo", pixels(render_x()), **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, refused.value.details()), refused.value.details()


def test_a_preprocessed_tensor_cannot_be_explained(stub) -> None:
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=[1, 9, 9], data=np.zeros((1, 9, 9), np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as refused:
        explain(stub, "xo", pb.Image(tensor=tensor))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UINT8 pixels" in refused.value.details()


def test_an_unknown_model_is_not_found(stub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        explain(stub, "nope", pixels(render_x()))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def explanation_rows(server: ServerProcess, model: str, method: str) -> float:
    return metric(server, "cnnserve_explanation_rows_total", method=method, model=model, version="1")


def test_explanations_are_counted_apart_from_classifications(stub, explaining_server) -> None:
    before = explanation_rows(explaining_server, "xo", "rise")
    explain(stub, "xo", pixels(render_o()), method=pb.RISE, rise=pb.RiseOptions(masks=40))
    wait_until(lambda: explanation_rows(explaining_server, "xo", "rise") == before + 41, "rows not counted")
    requests = metric(explaining_server, "cnnserve_requests_total", api="explain", code="OK", model="xo", version="1")
    assert requests >= 1


def test_a_call_that_runs_out_of_time_is_deadline_exceeded(stub) -> None:
    big = np.kron(render_x(), np.ones((20, 20), np.uint8))
    with pytest.raises(grpc.RpcError) as late:
        explain(stub, "xo", pixels(big), method=pb.RISE, rise=pb.RiseOptions(masks=9000), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_cancelled_explanation_submits_no_more_rows(stub, explaining_server) -> None:
    big = np.kron(render_x(), np.ones((20, 20), np.uint8))
    before = explanation_rows(explaining_server, "xo", "rise")
    request = pb.ExplainRequest(model="xo", image=pixels(big), method=pb.RISE, rise=pb.RiseOptions(masks=9000))
    call = stub.Explain.future(request, timeout=60)
    time.sleep(0.3)
    call.cancel()
    assert call.cancelled()
    executed = executions_of(stub, "xo")
    time.sleep(1.0)
    assert executions_of(stub, "xo") - executed <= 4, "batches kept running after the call was cancelled"
    assert explanation_rows(explaining_server, "xo", "rise") == before


def executions_of(stub, model: str) -> int:
    info = stub.GetModel(pb.GetModelRequest(name=model), timeout=10)
    return info.versions[0].statistics.execution_count


def test_explanations_leave_the_model_s_request_statistics_alone(stub) -> None:
    before = stub.GetModel(pb.GetModelRequest(name="xo"), timeout=10).versions[0].statistics.request_count
    explain(stub, "xo", pixels(render_x()))
    after = stub.GetModel(pb.GetModelRequest(name="xo"), timeout=10).versions[0].statistics.request_count
    assert after == before


def test_front_end_processes_explain_too(explain_repository: Path, tmp_path: Path, digits) -> None:
    with (
        running_server(explain_repository, "--frontends", "2", workdir=tmp_path) as server,
        channel_to(server) as channel,
    ):
        stub = pb_grpc.ImageClassifierStub(channel)
        response = explain(stub, "xo", pixels(render_x()))
        layers = explain(stub, "mnist_layers", pixels(digits[0][0]), method=pb.ACTIVATIONS, layer="conv2")
    assert share_on(render_x() > 0, saliency_of(response)) >= 0.8
    assert (
        grid_tiles(layers, "mnist_layers", "conv2", explain_repository)
        == activation_shape(explain_repository, "mnist_layers", "conv2")[0]
    )


def activation_shape(repository: Path, model: str, layer: str) -> tuple[int, int, int]:
    from cnnserve.export.pipeline import read_metadata

    metadata = read_metadata(repository / model / "1" / "model.onnx")
    (found,) = [activation for activation in metadata.activations if activation.layer == layer]
    return tuple(found.shape)


def grid_tiles(response: pb.ExplainResponse, model: str, layer: str, repository: Path) -> int:
    """How many tiles the activations PNG holds, counted from its size and the layer's map size."""
    channels, height, width = activation_shape(repository, model, layer)
    grid = Image.open(io.BytesIO(response.activations_png))
    assert grid.format == "PNG"
    scale = max(1, -(-64 // max(height, width)))
    columns = (grid.width - 2) // (width * scale + 2)
    rows = (grid.height - 2) // (height * scale + 2)
    assert columns * rows >= channels > (rows - 1) * columns, (columns, rows, channels)
    return channels


def test_models_exported_with_activations_list_their_layers_and_classify_as_usual(stub, digits) -> None:
    images, labels = digits
    info = stub.GetModel(pb.GetModelRequest(name="mnist_layers"), timeout=10)
    assert list(info.activation_layers) == ["conv1", "conv2"]
    assert list(stub.GetModel(pb.GetModelRequest(name="xo"), timeout=10).activation_layers) == []
    picks = list(range(0, 600, 30))
    answers = {}
    for model in ("mnist_net", "mnist_layers"):
        request = pb.ClassifyRequest(model=model, images=[pixels(images[i]) for i in picks], return_probabilities=True)
        answers[model] = np.array([r.probabilities for r in stub.Classify(request, timeout=10).results])
    np.testing.assert_allclose(answers["mnist_layers"], answers["mnist_net"], atol=1e-5)
    assert np.mean(answers["mnist_layers"].argmax(axis=1) == labels[picks]) >= 0.6


@pytest.mark.parametrize("layer", ["", "conv1", "conv2"])
def test_activations_come_back_as_a_grid_of_one_layer_s_feature_maps(
    stub, digits, explain_repository: Path, layer
) -> None:
    response = explain(stub, "mnist_layers", pixels(digits[0][0]), method=pb.ACTIVATIONS, layer=layer)
    drawn = layer or "conv1"
    assert response.layer == drawn and response.method == pb.ACTIVATIONS
    assert not response.HasField("saliency") and not response.overlay_png
    assert grid_tiles(response, "mnist_layers", drawn, explain_repository) > 1
    assert response.label in [str(d) for d in range(10)] and response.rows == 2


@pytest.mark.parametrize(
    ("model", "layer", "message"),
    [
        ("xo", "", r"exported without activation outputs; export it again with .*--activations"),
        ("mnist_layers", "conv9", r"no layer 'conv9' with activations; its layers are: conv1, conv2"),
    ],
)
def test_activations_of_a_model_or_layer_without_them_are_refused(stub, model, layer, message) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        explain(stub, model, pixels(render_x()), method=pb.ACTIVATIONS, layer=layer)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, refused.value.details()), refused.value.details()


def test_the_client_library_explains_and_the_command_line_writes_the_png(
    explaining_server: ServerProcess, tmp_path: Path
) -> None:
    from cnnserve.client import Client

    with Client(explaining_server.target) as client:
        explanation = client.explain(render_o(), model="xo", method="rise", cells=9, masks=300, seed=2)
    assert explanation.label == "O" and explanation.rows == 301 and explanation.saliency.shape == (9, 9)
    assert share_on(render_o() > 0, explanation.saliency) >= 0.5

    picture = tmp_path / "x.png"
    picture.write_bytes(png_bytes(render_x()))
    overlay, array = tmp_path / "x-explained.png", tmp_path / "x.npy"
    command = [sys.executable, "-m", "cnnserve", "explain", str(picture), "--model", "xo", "--server"]
    command += [explaining_server.target, "--png", str(overlay), "--npy", str(array)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert "X" in finished.stdout and str(overlay) in finished.stdout
    assert Image.open(overlay).format == "PNG"
    assert share_on(render_x() > 0, np.load(array)) >= 0.8
