"""Property: whatever request arrives, the answer is a correct success or a documented error, and the server lives.

Hypothesis generates Classify and ModelInfer requests: valid images, valid images with bytes flipped, cut or
inserted, random bytes, headers claiming huge sizes, tensors of any dtype, shape and length (with NaN and
infinity), unknown models and versions, top_k of any value. Every answer must be either a well-formed success
or INVALID_ARGUMENT / NOT_FOUND with a message; INTERNAL, UNKNOWN or a dead server fails the test.
"""

from __future__ import annotations

import io
import math

import grpc
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2 as ipb

from cnnserve.v1 import classifier_pb2 as pb
from tests.reliability.conftest import MAX_IMAGES, assert_still_serving
from tests.reliability.hostile_payloads import VALID_SEEDS, jpeg_claiming, png_claiming

DOCUMENTED_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
"""What a bad request may be answered with on an idle server (overload and shutdown have their own tests)."""
LABELS = {"xo": 2, "mnist_net": 10}
MODEL_NAMES = st.sampled_from(["xo", "mnist_net"] * 8 + ["", "resnet", "../xo", "xo\x00", "XO"])
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid PNG or JPEG with a few bytes overwritten, deleted, inserted, or the tail cut off."""
    data = bytearray(draw(st.sampled_from(VALID_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["overwrite", "delete", "insert", "cut"]))
        if edit == "overwrite":
            data[at] = draw(st.integers(0, 255))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@st.composite
def drawn_images(draw: st.DrawFn) -> bytes:
    """A valid image of any size, Pillow mode and accepted format."""
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    fmt, mode = draw(
        st.sampled_from([("PNG", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")] + [("JPEG", "L")])
        | st.sampled_from([("JPEG", "RGB"), ("JPEG", "CMYK")])
    )
    pixels = np.random.default_rng(draw(st.integers(0, 2**32))).integers(0, 256, (height, width), np.uint8)
    picture = Image.fromarray(pixels).convert(mode) if mode != "I;16" else Image.fromarray(pixels.astype("<u2"))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


ENCODED = st.one_of(
    st.sampled_from(VALID_SEEDS),
    drawn_images(),
    mutated_images(),
    st.binary(max_size=512),
    st.builds(png_claiming, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(jpeg_claiming, st.integers(0, 65535), st.integers(0, 65535)),
)
SHAPES = st.sampled_from(
    [[9, 9], [9, 9, 1], [9, 9, 3], [1, 9, 9], [28, 28], [1, 28, 28], [1, 1, 9, 9], [3, 9, 9], [2**32, 2**32]]
) | st.lists(st.integers(-3, 40) | st.integers(-(2**63), 2**63 - 1), max_size=5)


@st.composite
def tensor_bytes(draw: st.DrawFn, shape: list[int], itemsize: int) -> bytes:
    """Usually exactly the bytes `shape` needs (float32 content sometimes NaN or infinite), else anything."""
    elements = math.prod(shape) if shape and all(0 < side < 100_000 for side in shape) else -1
    if not 0 < elements <= 10_000 or (draw(st.booleans()) and draw(st.booleans())):
        return draw(st.binary(max_size=1024))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    if itemsize == 1:
        return rng.integers(0, 256, elements, np.uint8).tobytes()
    values = rng.normal(size=elements).astype("<f4")
    poison = draw(st.sampled_from([None, None, np.nan, np.inf, -np.inf, 3e38]))
    if poison is not None:
        values[draw(st.integers(0, elements - 1))] = poison
    return values.tobytes()


@st.composite
def tensor_images(draw: st.DrawFn) -> pb.Image:
    dtype = draw(st.sampled_from([pb.UINT8, pb.FLOAT32, pb.UINT8, pb.FLOAT32, pb.DATA_TYPE_UNSPECIFIED, 9]))
    shape = draw(SHAPES)
    data = draw(tensor_bytes(shape, 4 if dtype == pb.FLOAT32 else 1))
    return pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))


VALID_ENCODED = st.sampled_from(VALID_SEEDS) | drawn_images()
IMAGES = st.one_of(
    *[st.builds(lambda data: pb.Image(encoded=data), choice) for choice in (VALID_ENCODED, VALID_ENCODED, ENCODED)],
    tensor_images(),
    st.just(pb.Image()),
)
CLASSIFY_REQUESTS = st.builds(
    pb.ClassifyRequest,
    model=MODEL_NAMES,
    version=st.sampled_from([0] * 8 + [1] * 4 + [2, -1, 2**62]),
    images=st.lists(IMAGES, min_size=1, max_size=MAX_IMAGES) | st.lists(IMAGES, max_size=MAX_IMAGES + 2),
    top_k=st.integers(0, 2) | st.integers(-3, 12),
    return_probabilities=st.booleans(),
)


def check_classification(request: pb.ClassifyRequest, answer: pb.ClassifyResponse) -> None:
    labels = LABELS[request.model]
    assert answer.model == request.model and answer.version == 1
    assert len(answer.results) == len(request.images)
    for result in answer.results:
        assert len(result.top) == (request.top_k or 1)
        chances = [entry.probability for entry in result.top]
        assert chances == sorted(chances, reverse=True)
        assert all(0 <= entry.index < labels and 0.0 <= entry.probability <= 1.0 for entry in result.top)
        if request.return_probabilities:
            assert len(result.probabilities) == labels
            assert math.isclose(sum(result.probabilities), 1.0, abs_tol=1e-4)


@PROPERTY_SETTINGS
@given(request=CLASSIFY_REQUESTS)
def test_every_generated_classify_request_gets_a_success_or_a_documented_error(hardened_server, classifier, request):
    try:
        answer = classifier.Classify(request, timeout=10)
    except grpc.RpcError as failure:
        assert failure.code() in DOCUMENTED_ERRORS, (failure.code(), failure.details())
        assert failure.details(), "an error must say what was wrong"
        event(failure.code().name)
    else:
        check_classification(request, answer)
        event("OK")
    assert hardened_server.process.poll() is None, hardened_server.log()


@st.composite
def infer_requests(draw: st.DrawFn) -> ipb.ModelInferRequest:
    request = ipb.ModelInferRequest(
        model_name=draw(MODEL_NAMES),
        model_version=draw(st.sampled_from([""] * 6 + ["1"] * 3 + ["2", "-1", "01", "v1", "9" * 30])),
    )
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        valid_shapes = st.sampled_from([[1, 1, 9, 9], [2, 1, 9, 9], [1, 1, 28, 28], [3, 1, 28, 28]])
        shape = draw(valid_shapes | valid_shapes | SHAPES)
        datatype = draw(st.sampled_from(["FP32"] * 6 + ["UINT8", "FP16", "BYTES", ""]))
        request.inputs.add(name=draw(st.sampled_from(["input"] * 5 + ["images"])), datatype=datatype, shape=shape)
        if draw(st.booleans()) or not shape:
            request.raw_input_contents.append(draw(tensor_bytes(shape, 4)))
        else:
            elements = math.prod(shape) if all(0 < side < 50 for side in shape) else 3
            count = draw(st.sampled_from([elements, elements, 81, 0])) if elements <= 5000 else 3
            values = st.lists(st.floats(width=32), min_size=count, max_size=count)
            request.inputs[-1].contents.fp32_contents.extend(draw(values))
    if draw(st.booleans()):
        output = request.outputs.add(name=draw(st.sampled_from(["output", "output", "probabilities"])))
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(-2, 12))
    return request


@PROPERTY_SETTINGS
@given(request=infer_requests())
def test_every_generated_infer_request_gets_a_success_or_a_documented_error(hardened_server, inference, request):
    try:
        answer = inference.ModelInfer(request, timeout=10)
    except grpc.RpcError as failure:
        assert failure.code() in DOCUMENTED_ERRORS, (failure.code(), failure.details())
        assert failure.details()
        event(failure.code().name)
    else:
        event("OK")
        rows = request.inputs[0].shape[0]
        assert answer.model_name == request.model_name
        assert len(answer.outputs) == len(answer.raw_output_contents) >= 1
        for output, content in zip(answer.outputs, answer.raw_output_contents, strict=True):
            assert output.shape[0] == rows
            if output.datatype == "FP32":
                probabilities = np.frombuffer(content, "<f4").reshape(rows, LABELS[request.model_name])
                # Like Triton, the protocol passes NaN and infinity through to the model: a row holding one may
                # answer NaN; every other row's probabilities sum to one.
                finite = np.isfinite(probabilities).all(axis=1)
                np.testing.assert_allclose(probabilities[finite].sum(axis=1), 1.0, atol=1e-4)
    assert hardened_server.process.poll() is None, hardened_server.log()


def test_the_server_serves_and_logged_no_unexpected_error_after_the_generated_requests(
    hardened_server, classifier
) -> None:
    assert_still_serving(hardened_server, classifier)
    log = hardened_server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log
