"""`ModelInfo` carries every field of the server's description: an imported uint8 NHWC model's dtype, resize,
crop ratio and background come through `Client.model`, `Client.models` and `cnnserve models --json`, and a
server older than those fields is read with their defaults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from cnnserve.cli import main
from cnnserve.client import Client, InputSpec, Preprocessing
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc

IMPORTED = pb.ModelInfo(
    name="tflite_uint8",
    ready=True,
    labels=["cat", "dog"],
    output_kind="logits",
    input=pb.InputSpec(channels=3, height=16, width=16, color="RGB", layout="NHWC", dtype="uint8"),
    preprocessing=pb.Preprocessing(
        scale=1.0, mean=[0.0], std=[1.0], resize="center_crop", crop_ratio=0.75, background=[0, 64, 128]
    ),
)
OLDER_SERVER = pb.ModelInfo(
    name="xo",
    ready=True,
    labels=["O", "X"],
    input=pb.InputSpec(channels=1, height=9, width=9, color="L", layout="NCHW"),
    preprocessing=pb.Preprocessing(scale=1 / 255, mean=[0.5], std=[0.5]),
)
"""As a server that predates dtype, resize, crop_ratio and background describes a model: without them."""


MODELS = {info.name: info for info in (IMPORTED, OLDER_SERVER)}


class DescribingServer(pb_grpc.ImageClassifierServicer):
    """Describes the two models above, as a real server would over gRPC."""

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return MODELS[request.name]

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=list(MODELS.values()))


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ImageClassifierServicer_to_server(DescribingServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_an_imported_models_input_and_preprocessing_come_through_whole(target: str) -> None:
    with Client(target) as client:
        info = client.model("tflite_uint8")
    assert info.input == InputSpec(channels=3, height=16, width=16, color="RGB", layout="NHWC", dtype="uint8")
    assert info.preprocessing == Preprocessing(
        scale=1.0, mean=(0.0,), std=(1.0,), invert=False, resize="center_crop", crop_ratio=0.75, background=(0, 64, 128)
    )


def test_a_server_older_than_the_fields_is_read_with_their_defaults(target: str) -> None:
    with Client(target) as client:
        info = client.model("xo")
    assert info.input.dtype == "float32"
    assert (info.preprocessing.resize, info.preprocessing.crop_ratio) == ("stretch", 0.875)
    assert info.preprocessing.background == (255, 255, 255)


def test_models_json_shows_dtype_resize_crop_ratio_and_background(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--server", target, "--json"]) == 0
    models = {m["name"]: m for m in map(json.loads, capsys.readouterr().out.splitlines())}
    imported = models["tflite_uint8"]
    assert (imported["input"]["layout"], imported["input"]["dtype"]) == ("NHWC", "uint8")
    preprocessing = imported["preprocessing"]
    assert (preprocessing["resize"], preprocessing["crop_ratio"]) == ("center_crop", 0.75)
    assert preprocessing["background"] == [0, 64, 128]
    assert models["xo"]["input"]["dtype"] == "float32"
