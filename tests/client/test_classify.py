"""The blocking client against a real server: every kind of image, typed answers, models, health and errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnserve.client import (
    Classification,
    Client,
    HealthStatus,
    ImageError,
    InvalidInput,
    ModelNotFound,
    Prediction,
    Unavailable,
)
from cnnserve.export import render_o, render_x
from tests.conftest import jpeg_bytes, png_bytes
from tests.servers import ServerProcess

X = render_x()
O = render_o()  # noqa: E741 - the letter O is the label


def preprocessed(pixels: np.ndarray) -> np.ndarray:
    """xo's model input for 9x9 pixels: (pixel / 255 - 0.5) / 0.5, shape [1, 9, 9]."""
    return ((pixels.astype(np.float32) / 255 - 0.5) / 0.5)[np.newaxis]


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def png_file(folder: Path, pixels: np.ndarray) -> Path:
    data = png_bytes(pixels)
    return write(folder, f"{hashlib.sha1(data).hexdigest()}.png", data)


IMAGE_KINDS = {
    "path as str": lambda pixels, tmp: str(png_file(tmp, pixels)),
    "pathlib.Path": lambda pixels, tmp: png_file(tmp, pixels),
    "PNG bytes": lambda pixels, tmp: png_bytes(pixels),
    "JPEG bytes": lambda pixels, tmp: jpeg_bytes(np.kron(pixels, np.ones((4, 4), np.uint8))),
    "bytearray": lambda pixels, tmp: bytearray(png_bytes(pixels)),
    "PIL grey": lambda pixels, tmp: Image.fromarray(pixels),
    "PIL RGB": lambda pixels, tmp: Image.fromarray(pixels).convert("RGB"),
    "PIL RGBA (sent as PNG)": lambda pixels, tmp: Image.fromarray(pixels).convert("RGBA"),
    "uint8 [H, W]": lambda pixels, tmp: pixels,
    "uint8 [H, W, 1]": lambda pixels, tmp: pixels[:, :, np.newaxis],
    "uint8 [H, W, 3]": lambda pixels, tmp: np.repeat(pixels[:, :, np.newaxis], 3, axis=2),
    "uint8 larger, resized by the server": lambda pixels, tmp: np.kron(pixels, np.ones((3, 3), np.uint8)),
    "float32 [C, H, W] model input": lambda pixels, tmp: preprocessed(pixels),
}


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_every_kind_of_image_is_classified(client: Client, kind: str, tmp_path: Path) -> None:
    make = IMAGE_KINDS[kind]
    results = client.classify([make(X, tmp_path), make(O, tmp_path)], model="xo")
    assert [r.label for r in results] == ["X", "O"]


def test_results_are_typed_with_label_index_and_probability(client: Client) -> None:
    (result,) = client.classify([X], model="xo", top_k=2, return_probabilities=True)
    assert isinstance(result, Classification)
    assert (result.label, result.index, result.model, result.version) == ("X", 1, "xo", 1)
    assert [p.label for p in result.predictions] == ["X", "O"]
    assert all(isinstance(p, Prediction) for p in result.predictions)
    assert result.probability == result.predictions[0].probability > 0.5
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert result.probabilities[1] == pytest.approx(result.probability)


def test_a_lone_path_bytes_or_pil_image_counts_as_one_image(client: Client, tmp_path: Path) -> None:
    path = write(tmp_path, "x.png", png_bytes(X))
    for image in (path, str(path), png_bytes(X), Image.fromarray(X)):
        assert [r.label for r in client.classify(image, model="xo")] == ["X"]


def test_a_4d_array_is_a_batch_and_a_lone_3d_array_is_refused(client: Client) -> None:
    batch = np.stack([preprocessed(X), preprocessed(O)])
    assert [r.label for r in client.classify(batch, model="xo")] == ["X", "O"]
    with pytest.raises(TypeError, match="ambiguous"):
        client.classify(np.stack([X, O]), model="xo")


def test_a_generator_of_images_is_one_request(client: Client) -> None:
    results = client.classify((pixels for pixels in [X, O, X]), model="xo")
    assert [r.label for r in results] == ["X", "O", "X"]


def test_models_and_model_describe_the_repository(client: Client) -> None:
    models = {model.name: model for model in client.models()}
    assert set(models) == {"mnist_net", "xo"}
    xo = client.model("xo")
    assert xo.ready and xo.labels == ("O", "X") and xo.name == "xo"
    assert (xo.input.channels, xo.input.height, xo.input.width, xo.input.color) == (1, 9, 9, "L")
    assert xo.preprocessing.mean == pytest.approx((0.5,))
    assert (xo.input.layout, xo.input.dtype) == ("NCHW", "float32")
    assert (xo.preprocessing.resize, xo.preprocessing.background) == ("stretch", (255, 255, 255))
    (version,) = xo.versions
    assert version.ready and version.execution_provider == "CPUExecutionProvider"
    assert version.precision == "fp32"
    client.classify([X], model="xo")
    client.classify([O, X], model="xo")
    (after,) = client.model("xo").versions
    assert after.statistics.request_count == version.statistics.request_count + 2, "one count per request"
    assert after.statistics.inference_count == version.statistics.inference_count + 3, "one count per image"


def test_health_is_serving(client: Client) -> None:
    assert client.health() is HealthStatus.SERVING
    assert client.health("cnnserve.v1.ImageClassifier") is HealthStatus.SERVING
    assert client.health("no.such.Service") is HealthStatus.SERVICE_UNKNOWN


def test_an_unknown_model_raises_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFound, match="nope") as failure:
        client.classify([X], model="nope")
    assert failure.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(ModelNotFound):
        client.model("nope")


def test_an_image_the_server_cannot_decode_raises_invalid_input(client: Client) -> None:
    with pytest.raises(InvalidInput, match="image 1"):
        client.classify([X, b"not a png"], model="xo")


def test_an_unreadable_file_raises_image_error_before_sending(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.png"):
        client.classify([X, tmp_path / "missing.png"], model="xo")
    for bad in (np.zeros((9, 9), np.int64), np.zeros(9, np.uint8), object()):
        with pytest.raises(ImageError):
            client.classify([bad], model="xo")


def test_bad_arguments_fail_before_anything_is_sent(client: Client) -> None:
    with pytest.raises(ValueError, match="top_k"):
        client.classify([X], model="xo", top_k=0)
    with pytest.raises(ValueError, match="model"):
        client.classify([X], model="")


def test_the_context_manager_closes_the_channel(server: ServerProcess) -> None:
    with Client(server.target) as client:
        assert client.classify([X], model="xo")[0].label == "X"
    with pytest.raises(ValueError, match="closed"):
        client.classify([X], model="xo")


def test_an_unreachable_server_raises_unavailable(unused_port: int) -> None:
    with Client(f"127.0.0.1:{unused_port}", retry=None, timeout=5) as client, pytest.raises(Unavailable):
        client.health()
