"""Broken and hostile input against a real server: every one is answered with a clear status, none crashes it.

The server runs with small limits (conftest.HARDENED_FLAGS): 4 images per request, 1,000,000 pixels per
image, 1 MiB per message. After every bad request a good one must still be classified correctly.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as ipb

from cnnserve.export import render_x
from cnnserve.v1 import classifier_pb2 as pb
from tests.reliability.conftest import MAX_IMAGES, MAX_MESSAGE_BYTES, X_PNG, assert_still_serving, rss_bytes
from tests.reliability.hostile_payloads import (
    TIFF_DEFLATE,
    TIFF_UNCOMPRESSED,
    blank_png,
    blank_tiff,
    bmp_claiming,
    deflated_zeros,
    float_tensor_bytes,
    gif_claiming,
    jpeg_claiming,
    other_format,
    png_claiming,
    png_with_broken_second_chunk,
    random_bytes,
    tiff_claiming,
    tiff_pages,
    tiff_with_huge_tiles,
    truncated,
    webp_claiming,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
XO_INPUT = (1, 9, 9)
NOT_DECODED = "could not be decoded as PNG, JPEG, WebP, BMP, GIF or TIFF"
OVER_LIMIT = "over the limit of 1000000"


def encoded(data: bytes) -> pb.Image:
    return pb.Image(encoded=data)


def tensor(dtype: int, shape: list[int], data: bytes) -> pb.Image:
    return pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))


def refusal(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=10, **kwargs)
    return raised.value


BAD_IMAGES = [
    pytest.param(encoded(random_bytes(4000)), NOT_DECODED, id="random-bytes"),
    pytest.param(encoded(truncated(X_PNG)), "could not be decoded", id="truncated-png"),
    pytest.param(encoded(truncated(jpeg_claiming(9, 9), 0.6)), "could not be decoded", id="truncated-jpeg"),
    pytest.param(encoded(X_PNG[:8]), "could not be decoded", id="png-signature-only"),
    pytest.param(encoded(png_with_broken_second_chunk(X_PNG)), "SyntaxError: broken PNG", id="png-broken-chunk"),
    pytest.param(encoded(b""), "image 0 is empty", id="zero-length"),
    pytest.param(pb.Image(), "set `encoded` or `tensor`", id="neither-encoded-nor-tensor"),
    pytest.param(encoded(png_claiming(2000, 2000)), OVER_LIMIT, id="png-header-claims-4M-pixels"),
    pytest.param(encoded(png_claiming(65535, 65535)), OVER_LIMIT, id="png-header-claims-4G-pixels"),
    pytest.param(encoded(jpeg_claiming(1500, 1500)), OVER_LIMIT, id="jpeg-header-claims-2M-pixels"),
    pytest.param(encoded(gif_claiming(2000, 2000)), OVER_LIMIT, id="gif-header-claims-4M-pixels"),
    pytest.param(encoded(gif_claiming(65535, 65535)), OVER_LIMIT, id="gif-header-claims-4G-pixels"),
    pytest.param(encoded(bmp_claiming(2000, -2000)), OVER_LIMIT, id="bmp-header-claims-4M-pixels-top-down"),
    pytest.param(encoded(bmp_claiming(100_000, 100_000)), OVER_LIMIT, id="bmp-header-claims-10G-pixels"),
    pytest.param(encoded(webp_claiming(2000, 2000)), OVER_LIMIT, id="webp-header-claims-4M-pixels"),
    pytest.param(encoded(webp_claiming(16384, 16384)), OVER_LIMIT, id="webp-header-claims-268M-pixels"),
    pytest.param(encoded(tiff_claiming(2000, 2000)), OVER_LIMIT, id="tiff-header-claims-4M-pixels"),
    pytest.param(encoded(tiff_claiming(100_000, 100_000)), OVER_LIMIT, id="tiff-header-claims-10G-pixels"),
    pytest.param(
        encoded(tiff_with_huge_tiles(2048)), f"2048x2048-pixel tiles, {OVER_LIMIT}", id="tiff-of-4M-pixel-tiles"
    ),
    pytest.param(encoded(png_claiming(0, 0)), "could not be decoded", id="png-of-zero-pixels"),
    pytest.param(encoded(tiff_claiming(0, 9)), NOT_DECODED, id="tiff-of-zero-pixels"),
    pytest.param(encoded(truncated(blank_tiff(300, 300), 0.7)), NOT_DECODED, id="truncated-tiff"),
    pytest.param(encoded(other_format("PPM")), NOT_DECODED, id="ppm"),
    pytest.param(encoded(other_format("TGA")), NOT_DECODED, id="tga"),
    pytest.param(encoded(other_format("JPEG2000")), NOT_DECODED, id="jpeg-2000"),
    pytest.param(tensor(pb.UINT8, [9, 9, 4], bytes(324)), "C 1 or 3", id="uint8-four-channels"),
    pytest.param(tensor(pb.UINT8, [9, 9, 0], b""), "C 1 or 3", id="uint8-zero-channels"),
    pytest.param(tensor(pb.UINT8, [9, 9], bytes(80)), "needs 81 bytes, got 80", id="uint8-short-data"),
    pytest.param(tensor(pb.UINT8, [-9, 9], bytes(81)), "must have shape", id="uint8-negative-side"),
    pytest.param(tensor(pb.UINT8, [2**32, 2**32], b""), "needs 18446744073709551616 bytes", id="uint8-overflowing"),
    pytest.param(tensor(pb.UINT8, [9, 9, 3, 1], bytes(243)), "must have shape", id="uint8-four-dimensions"),
    pytest.param(tensor(pb.FLOAT32, [3, 9, 9], bytes(972)), "input shape [1, 9, 9]", id="float32-three-channels"),
    pytest.param(tensor(pb.FLOAT32, [1, 9, 9], bytes(323)), "needs 324 bytes, got 323", id="float32-short-data"),
    pytest.param(tensor(pb.FLOAT32, [], b""), "input shape [1, 9, 9]", id="float32-no-shape"),
    pytest.param(tensor(pb.FLOAT32, [1, 9, 9], float_tensor_bytes(np.full(XO_INPUT, np.nan))), "NaN", id="float32-nan"),
    pytest.param(
        tensor(pb.FLOAT32, [1, 9, 9], float_tensor_bytes(np.full(XO_INPUT, -np.inf))), "infinity", id="float32-inf"
    ),
    pytest.param(tensor(pb.DATA_TYPE_UNSPECIFIED, [9, 9], bytes(81)), "UINT8 or FLOAT32", id="dtype-unspecified"),
    pytest.param(tensor(77, [9, 9], bytes(81)), "UINT8 or FLOAT32", id="dtype-unknown-enum-value"),
]


@pytest.mark.parametrize(("image", "message"), BAD_IMAGES)
def test_a_bad_image_is_invalid_argument_with_a_message(hardened_server, classifier, image, message) -> None:
    failure = refusal(classifier.Classify, pb.ClassifyRequest(model="xo", images=[image]))
    assert failure.code() == INVALID, failure.details()
    assert message in failure.details()
    assert_still_serving(hardened_server, classifier)


def test_one_bad_image_names_its_position_and_spoils_only_its_own_request(hardened_server, classifier) -> None:
    images = [encoded(X_PNG), encoded(X_PNG), encoded(random_bytes(100))]
    failure = refusal(classifier.Classify, pb.ClassifyRequest(model="xo", images=images))
    assert failure.code() == INVALID and "image 2 " in failure.details()
    assert_still_serving(hardened_server, classifier)


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(blank_png(9000, 9000), id="png"),
        pytest.param(blank_tiff(9000, 9000), id="tiff"),
        pytest.param(gif_claiming(9000, 9000), id="gif"),
        pytest.param(bmp_claiming(9000, 9000), id="bmp"),
        pytest.param(webp_claiming(9000, 9000), id="webp"),
    ],
)
def test_a_decompression_bomb_is_refused_before_it_is_decoded(hardened_server, classifier, bomb) -> None:
    assert len(bomb) < 200_000, "a small file that would decode to 81 MB"
    before = rss_bytes(hardened_server.process.pid)
    for _ in range(5):
        failure = refusal(classifier.Classify, pb.ClassifyRequest(model="mnist_net", images=[encoded(bomb)]))
        assert failure.code() == INVALID
        assert "9000x9000 pixels, over the limit of 1000000; downscale it" in failure.details()
    growth = rss_bytes(hardened_server.process.pid) - before
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB: the bomb was decoded"
    assert_still_serving(hardened_server, classifier)


def test_only_the_first_page_of_a_multi_page_tiff_is_decoded(hardened_server, classifier) -> None:
    """The first page is an X; the second a bomb that Pillow would decode to 81 MB if it were asked to."""
    x = render_x()
    tiff = tiff_pages(
        (x.shape[1], x.shape[0], x.tobytes(), TIFF_UNCOMPRESSED),
        (9000, 9000, deflated_zeros(9000, 9000), TIFF_DEFLATE),
    )
    before = rss_bytes(hardened_server.process.pid)
    for _ in range(3):
        answer = classifier.Classify(pb.ClassifyRequest(model="xo", images=[encoded(tiff)]), timeout=10)
        assert answer.results[0].top[0].label == "X"
    growth = rss_bytes(hardened_server.process.pid) - before
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB: the second page was decoded"
    assert_still_serving(hardened_server, classifier)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        pytest.param(pb.ClassifyRequest(), NOT_FOUND, "unknown model ''", id="empty-request"),
        pytest.param(pb.ClassifyRequest(model="xo"), INVALID, "no images", id="no-images"),
        pytest.param(
            pb.ClassifyRequest(model="xo", images=[encoded(X_PNG)] * (MAX_IMAGES + 1)),
            INVALID,
            f"at most {MAX_IMAGES} are accepted",
            id="too-many-images",
        ),
        pytest.param(
            pb.ClassifyRequest(model="resnet", images=[encoded(X_PNG)]), NOT_FOUND, "served here are", id="no-model"
        ),
        pytest.param(
            pb.ClassifyRequest(model="xo", version=7, images=[encoded(X_PNG)]),
            NOT_FOUND,
            "no version 7",
            id="no-version",
        ),
        pytest.param(
            pb.ClassifyRequest(model="xo", version=-1, images=[encoded(X_PNG)]),
            NOT_FOUND,
            "no version -1",
            id="negative-version",
        ),
        pytest.param(
            pb.ClassifyRequest(model="xo", top_k=3, images=[encoded(X_PNG)]), INVALID, "between 1 and 2", id="top-k-3"
        ),
        pytest.param(
            pb.ClassifyRequest(model="xo", top_k=-1, images=[encoded(X_PNG)]),
            INVALID,
            "between 1 and 2",
            id="top-k-negative",
        ),
        pytest.param(
            pb.ClassifyRequest(model="mnist_net", top_k=11, images=[encoded(X_PNG)]),
            INVALID,
            "between 1 and 10",
            id="top-k-over-labels",
        ),
    ],
)
def test_a_bad_request_gets_a_clear_status(hardened_server, classifier, request_, code, message) -> None:
    failure = refusal(classifier.Classify, request_)
    assert failure.code() == code, failure.details()
    assert message in failure.details()
    assert_still_serving(hardened_server, classifier)


def test_a_message_over_the_size_limit_is_refused_by_grpc(hardened_server, classifier) -> None:
    oversized = pb.ClassifyRequest(model="xo", images=[encoded(random_bytes(MAX_MESSAGE_BYTES + 1000))])
    failure = refusal(classifier.Classify, oversized)
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in failure.details()
    assert_still_serving(hardened_server, classifier)


def xo_infer(
    data: bytes | None = None, shape: tuple[int, ...] = (1, *XO_INPUT), **fields: object
) -> ipb.ModelInferRequest:
    """An Open Inference Protocol request for `xo` with one raw FP32 input (zeros unless `data` is given)."""
    request = ipb.ModelInferRequest(model_name="xo", **fields)
    request.inputs.add(name="input", datatype="FP32", shape=list(shape))
    rows = max(shape[0], 0) if shape else 0
    request.raw_input_contents.append(data if data is not None else bytes(4 * rows * 81))
    return request


def _with(request: ipb.ModelInferRequest, change) -> ipb.ModelInferRequest:
    change(request)
    return request


BAD_INFER_REQUESTS = [
    pytest.param(ipb.ModelInferRequest(), NOT_FOUND, "unknown model: ''", id="empty-request"),
    pytest.param(ipb.ModelInferRequest(model_name="xo"), INVALID, "expected 1 inputs but got 0", id="no-inputs"),
    pytest.param(
        _with(xo_infer(), lambda r: setattr(r.inputs[0], "datatype", "INT64")), INVALID, "data-type", id="int64"
    ),
    pytest.param(xo_infer(shape=(1, 3, 9, 9)), INVALID, "unexpected shape", id="three-channels"),
    pytest.param(xo_infer(shape=(0, 1, 9, 9)), INVALID, "unexpected shape", id="zero-rows"),
    pytest.param(xo_infer(bytes(323)), INVALID, "unexpected total byte size 323", id="short-data"),
    pytest.param(
        xo_infer(shape=(MAX_IMAGES + 1, *XO_INPUT)), INVALID, f"batch-size must be <= {MAX_IMAGES}", id="too-many"
    ),
    pytest.param(xo_infer(model_version="7"), NOT_FOUND, "'xo' version 7 is not found", id="no-version"),
    pytest.param(xo_infer(model_version="latest"), INVALID, "positive integer", id="version-not-a-number"),
    pytest.param(
        _with(
            xo_infer(),
            lambda r: (
                r.outputs.add(name="output").parameters["classification"].CopyFrom(ipb.InferParameter(int64_param=0))
            ),
        ),
        INVALID,
        "'classification' must be an integer >= 1",
        id="top-k-zero",
    ),
    pytest.param(
        _with(xo_infer(), lambda r: r.raw_input_contents.append(bytes(324))),
        INVALID,
        "expected 1 raw_input_contents",
        id="two-raw-contents",
    ),
]


@pytest.mark.parametrize(("request_", "code", "message"), BAD_INFER_REQUESTS)
def test_open_inference_protocol_bad_requests_get_a_clear_status(
    hardened_server, classifier, inference, request_, code, message
) -> None:
    failure = refusal(inference.ModelInfer, request_)
    assert failure.code() == code, failure.details()
    assert message in failure.details()
    assert_still_serving(hardened_server, classifier)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38], ids=["nan", "inf", "minus-inf", "huge"])
def test_open_inference_protocol_passes_any_fp32_value_to_the_model_as_triton_does(
    hardened_server, classifier, inference, value
) -> None:
    answer = inference.ModelInfer(xo_infer(float_tensor_bytes(np.full((1, *XO_INPUT), value))), timeout=10)
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [("output", "FP32", [1, 2])]
    assert_still_serving(hardened_server, classifier)


def test_the_server_log_shows_no_unexpected_errors_after_the_hostile_input(hardened_server) -> None:
    log = hardened_server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log
