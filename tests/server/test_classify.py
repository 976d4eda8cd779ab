"""Classify over real gRPC against a real server serving models exported by cnnserve.export."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cnnserve.export import get_spec, render_o, render_x
from cnnserve.preprocessing import to_model_input
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import jpeg_bytes, png_bytes
from tests.servers import ServerProcess, channel_to


@pytest.fixture(scope="module")
def stub(server: ServerProcess):
    with channel_to(server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def classify(stub, model: str, *images: pb.Image, **fields) -> pb.ClassifyResponse:
    return stub.Classify(pb.ClassifyRequest(model=model, images=list(images), **fields), timeout=10)


def test_a_generated_x_and_o_are_classified_as_x_and_o(stub) -> None:
    response = classify(stub, "xo", pb.Image(encoded=png_bytes(render_x())), pb.Image(encoded=png_bytes(render_o())))
    assert [r.top[0].label for r in response.results] == ["X", "O"]
    assert response.model == "xo" and response.version == 1


def test_digit_pngs_and_jpegs_are_classified_correctly(stub, digits) -> None:
    images, labels = digits
    picks = np.arange(0, len(images), 60)[:30]
    requests = [pb.Image(encoded=png_bytes(images[i])) for i in picks[:15]]
    requests += [pb.Image(encoded=jpeg_bytes(images[i])) for i in picks[15:]]
    response = classify(stub, "mnist_net", *requests)
    predicted = np.array([int(r.top[0].label) for r in response.results])
    assert (predicted == labels[picks]).mean() >= 0.8


def test_raw_tensors_give_the_same_answer_as_the_encoded_image(stub, digits) -> None:
    images, _ = digits
    pixels = images[7]
    model_input = to_model_input(pixels[np.newaxis], get_spec("mnist_net").preprocessing)[0]
    response = classify(
        stub,
        "mnist_net",
        pb.Image(encoded=png_bytes(pixels)),
        pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=[28, 28], data=pixels.tobytes())),
        pb.Image(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=model_input.astype("<f4").tobytes())),
        return_probabilities=True,
    )
    encoded, pixel_tensor, float_tensor = (np.array(r.probabilities) for r in response.results)
    assert encoded.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(pixel_tensor, encoded, atol=1e-6)
    np.testing.assert_allclose(float_tensor, encoded, atol=1e-4)


def test_top_k_returns_k_labels_most_probable_first(stub, digits) -> None:
    images, _ = digits
    response = classify(stub, "mnist_net", pb.Image(encoded=png_bytes(images[0])), top_k=3)
    top = response.results[0].top
    assert len(top) == 3
    assert top[0].probability >= top[1].probability >= top[2].probability
    assert len({t.label for t in top}) == 3


def test_an_rgb_image_of_another_size_is_converted_and_resized(stub) -> None:
    big_x = np.kron(render_x(), np.ones((8, 8), np.uint8))
    rgb = np.stack([big_x] * 3, axis=-1)
    response = classify(stub, "xo", pb.Image(encoded=png_bytes(rgb)))
    assert response.results[0].top[0].label == "X"


@pytest.mark.parametrize(
    ("model", "image", "fields", "code", "message"),
    [
        ("no_such_model", pb.Image(encoded=b"x"), {}, grpc.StatusCode.NOT_FOUND, "models served here are"),
        ("xo", pb.Image(encoded=b"not an image at all"), {}, grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded"),
        ("xo", pb.Image(encoded=b""), {}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ("xo", pb.Image(), {}, grpc.StatusCode.INVALID_ARGUMENT, "set `encoded` or `tensor`"),
        (
            "xo",
            pb.Image(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=bytes(4 * 784))),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input shape [1, 9, 9]",
        ),
        (
            "xo",
            pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=[9, 9], data=bytes(80))),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 81 bytes",
        ),
        ("xo", pb.Image(encoded=png_bytes(render_x())), {"top_k": 3}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ("xo", pb.Image(encoded=png_bytes(render_x())), {"version": 9}, grpc.StatusCode.NOT_FOUND, "no version 9"),
    ],
)
def test_bad_requests_get_a_clear_status(stub, model, image, fields, code, message) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        classify(stub, model, image, **fields)
    assert failure.value.code() == code
    assert message in failure.value.details()


def test_a_request_without_images_is_invalid(stub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        classify(stub, "xo")
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_server_still_serves_after_bad_requests(stub) -> None:
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            classify(stub, "xo", pb.Image(encoded=b"\x89PNG\r\n\x1a\n broken"))
    assert classify(stub, "xo", pb.Image(encoded=png_bytes(render_x()))).results[0].top[0].label == "X"
