"""`Client.explain`, `AsyncClient.explain` and `cnnserve explain` without a cnnserve server, and the activation
layers that `Client.model` and `cnnserve models` report for the activations method.

What is sent and what an answer means are checked against a stand-in ImageClassifier on loopback that records the
ExplainRequest it gets and answers a hand-built ExplainResponse (and describes two models), and on the messages
themselves; the explanations a real server makes are tested with the server.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from cnnserve.cli import build_parser, main
from cnnserve.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    Explanation,
    ImageError,
    InvalidInput,
    ModelNotFound,
    ProtocolError,
)
from cnnserve.client._base import ExplainOptions
from cnnserve.client._types import explanation_from
from cnnserve.export import render_x
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes

Capture = pytest.CaptureFixture[str]

SALIENCY = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
"""The map the stand-in answers: 3 x 4, negative and positive values."""
OVERLAY = b"\x89PNG\r\n\x1a\n overlay"
GRID = b"\x89PNG\r\n\x1a\n feature maps"
"""The activations PNG the stand-in answers."""
LAYERED = pb.ModelInfo(name="digits", ready=True, labels=["0", "1"], activation_layers=["conv1", "conv2"])
"""A model exported with activation outputs, as GetModel describes it; the stand-in's "xo" has none."""


def saliency_tensor(array: np.ndarray) -> pb.Tensor:
    return pb.Tensor(dtype=pb.FLOAT32, shape=list(array.shape), data=array.astype("<f4").tobytes())


def answer(**fields: object) -> pb.ExplainResponse:
    """An ExplainResponse as a server sends it, with `fields` changed."""
    values: dict[str, object] = {
        "model": "xo",
        "version": 3,
        "label": "X",
        "index": 1,
        "probability": 0.75,
        "saliency": saliency_tensor(SALIENCY),
        "method": pb.RISE,
        "rows": 501,
    }
    values.update(fields)
    return pb.ExplainResponse(**values)  # type: ignore[arg-type]


def activations_answer(**fields: object) -> pb.ExplainResponse:
    """An ACTIVATIONS ExplainResponse as a server sends it: the label, the layer and its PNG grid, and no map."""
    values: dict[str, object] = {
        "model": "digits",
        "version": 3,
        "label": "1",
        "index": 1,
        "probability": 0.75,
        "method": pb.ACTIVATIONS,
        "rows": 2,
        "layer": "conv1",
        "activations_png": GRID,
    }
    values.update(fields)
    return pb.ExplainResponse(**values)  # type: ignore[arg-type]


@dataclass
class StandIn(pb_grpc.ImageClassifierServicer):
    """Records each ExplainRequest and the time its deadline left; answers SALIENCY (with OVERLAY when asked), or
    for ACTIVATIONS the GRID of the layer asked for (conv1 by default), or aborts with `failure` when set.
    Describes LAYERED and an "xo" without activation layers."""

    failure: grpc.StatusCode | None = None
    requests: list[pb.ExplainRequest] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        with self._lock:
            self.requests.append(request)
            self.time_remaining.append(context.time_remaining())
        if self.failure is not None:
            context.abort(self.failure, f"scripted {self.failure.name}")
        if request.method == pb.ACTIVATIONS:
            return activations_answer(model=request.model, layer=request.layer or "conv1")
        return answer(
            model=request.model,
            label=request.label or "X",
            method=request.method,
            overlay_png=OVERLAY if request.overlay_png else b"",
        )

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        return {info.name: info for info in self.models()}[request.name]

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self.models())

    @staticmethod
    def models() -> list[pb.ModelInfo]:
        return [LAYERED, pb.ModelInfo(name="xo", ready=True, labels=["O", "X"])]


@dataclass
class StandInServer:
    servicer: StandIn
    target: str

    @property
    def request(self) -> pb.ExplainRequest:
        """The one request received."""
        assert len(self.servicer.requests) == 1, self.servicer.requests
        return self.servicer.requests[0]


@pytest.fixture
def stand_in() -> Iterator[StandInServer]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ImageClassifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield StandInServer(servicer, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)


@pytest.fixture
def client(stand_in: StandInServer) -> Iterator[Client]:
    with Client(stand_in.target) as client:
        yield client


@pytest.fixture
def x_png(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(render_x()))
    return path


# The client: what it sends


def test_occlusion_is_the_default_and_sends_its_options(client: Client, stand_in: StandInServer, x_png: Path) -> None:
    client.explain(x_png, model="xo", version=2, label="O", patch=3, stride=2, max_rows=50)
    request = stand_in.request
    assert (request.model, request.version, request.label) == ("xo", 2, "O")
    assert request.image.encoded == x_png.read_bytes(), "a file is sent as it is"
    assert request.method == pb.OCCLUSION
    assert (request.occlusion.patch, request.occlusion.stride) == (3, 2)
    assert not request.HasField("rise")
    assert request.max_rows == 50 and not request.overlay_png


def test_rise_sends_its_options_and_seed(client: Client, stand_in: StandInServer) -> None:
    client.explain(render_x(), model="xo", method="rise", masks=200, cells=5, keep=0.25, seed=7, overlay_png=True)
    request = stand_in.request
    assert request.method == pb.RISE and not request.HasField("occlusion")
    assert (request.rise.masks, request.rise.cells, request.rise.seed) == (200, 5, 7)
    assert request.rise.keep == pytest.approx(0.25)
    assert request.image.tensor.dtype == pb.UINT8 and list(request.image.tensor.shape) == [9, 9]
    assert request.overlay_png


def test_options_left_out_are_left_to_the_server(client: Client, stand_in: StandInServer, x_png: Path) -> None:
    client.explain(str(x_png), model="xo", method="rise")
    request = stand_in.request
    assert (request.version, request.label, request.max_rows) == (0, "", 0)
    assert (request.rise.masks, request.rise.cells, request.rise.keep, request.rise.seed) == (0, 0, 0.0, 0)


def test_activations_send_the_layer_and_no_other_methods_options(
    client: Client, stand_in: StandInServer, x_png: Path
) -> None:
    client.explain(x_png, model="digits", method="activations", layer="conv2", label="1", max_rows=2)
    request = stand_in.request
    assert (request.method, request.layer, request.label, request.max_rows) == (pb.ACTIVATIONS, "conv2", "1", 2)
    assert not request.HasField("occlusion") and not request.HasField("rise")
    assert not request.overlay_png, "the feature maps come back without asking"


def test_activations_leave_the_layer_to_the_server(client: Client, stand_in: StandInServer, x_png: Path) -> None:
    client.explain(x_png, model="digits", method="activations")
    assert stand_in.request.layer == "", "empty: the model's first layer"


# The client: what the answer means


def test_the_answer_becomes_an_explanation(client: Client, x_png: Path) -> None:
    explanation = client.explain(x_png, model="xo", method="rise")
    assert isinstance(explanation, Explanation)
    assert (explanation.model, explanation.version, explanation.label, explanation.index) == ("xo", 3, "X", 1)
    assert explanation.probability == pytest.approx(0.75)
    assert (explanation.method, explanation.rows) == ("rise", 501)
    assert explanation.saliency.dtype == np.float32 and explanation.saliency.shape == (3, 4)
    np.testing.assert_array_equal(explanation.saliency, SALIENCY)
    assert explanation.overlay_png is None, "no overlay unless asked for"


def test_the_overlay_comes_back_when_asked_for(client: Client, x_png: Path) -> None:
    assert client.explain(x_png, model="xo", overlay_png=True).overlay_png == OVERLAY


def test_an_activations_answer_has_the_layer_and_its_png_and_no_map(client: Client, x_png: Path) -> None:
    explanation = client.explain(x_png, model="digits", method="activations", layer="conv2")
    assert (explanation.model, explanation.label, explanation.index, explanation.rows) == ("digits", "1", 1, 2)
    assert (explanation.method, explanation.layer, explanation.activations_png) == ("activations", "conv2", GRID)
    assert explanation.saliency is None and explanation.overlay_png is None


def test_other_methods_answer_no_layer_and_no_activations(client: Client, x_png: Path) -> None:
    explanation = client.explain(x_png, model="xo")
    assert (explanation.layer, explanation.activations_png) == ("", None)


def test_the_map_is_decoded_as_little_endian_whatever_the_host() -> None:
    sent = pb.Tensor(dtype=pb.FLOAT32, shape=[2, 2], data=struct.pack("<4f", 1.5, -2.25, 0.0, 3.0e-8))
    saliency = explanation_from(answer(saliency=sent)).saliency
    np.testing.assert_array_equal(saliency, np.array([[1.5, -2.25], [0.0, 3.0e-8]], dtype=np.float32))
    assert saliency.dtype == np.dtype(np.float32) and saliency.flags.writeable


def test_the_method_is_named_and_unspecified_means_occlusion() -> None:
    assert explanation_from(answer(method=pb.OCCLUSION)).method == "occlusion"
    assert explanation_from(answer(method=pb.EXPLAIN_METHOD_UNSPECIFIED)).method == "occlusion"
    assert explanation_from(answer(method=pb.RISE)).method == "rise"
    assert explanation_from(activations_answer()).method == "activations"


def test_a_map_sent_with_activations_is_still_checked_and_kept() -> None:
    assert explanation_from(activations_answer(saliency=saliency_tensor(SALIENCY))).saliency is not None
    with pytest.raises(ProtocolError, match="saliency"):
        explanation_from(activations_answer(saliency=pb.Tensor(dtype=pb.FLOAT32, shape=[3, 4], data=bytes(47))))


def without_saliency(response: pb.ExplainResponse) -> pb.ExplainResponse:
    response.ClearField("saliency")
    return response


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (without_saliency(answer(method=pb.OCCLUSION)), "method occlusion without its saliency map"),
        (without_saliency(answer(method=pb.RISE)), "method rise without its saliency map"),
        (activations_answer(activations_png=b""), "method activations without the feature maps' PNG"),
        (answer(method=7), "explanation method 7, which was not asked for"),
    ],
    ids=["occlusion without a map", "rise without a map", "activations without a png", "unknown method"],
)
def test_an_answer_missing_what_its_method_promises_is_a_protocol_error(
    response: pb.ExplainResponse, complaint: str
) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        explanation_from(response)


@pytest.mark.parametrize(
    "saliency",
    [
        pb.Tensor(dtype=pb.UINT8, shape=[3, 4], data=bytes(12)),
        pb.Tensor(dtype=pb.FLOAT32, shape=[12], data=bytes(48)),
        pb.Tensor(dtype=pb.FLOAT32, shape=[1, 3, 4], data=bytes(48)),
        pb.Tensor(dtype=pb.FLOAT32, shape=[3, 4], data=bytes(47)),
        pb.Tensor(dtype=pb.FLOAT32, shape=[0, 4], data=b""),
        pb.Tensor(),
    ],
    ids=["uint8", "1-D", "3-D", "short data", "empty", "missing"],
)
def test_a_map_that_breaks_the_contract_is_a_protocol_error(saliency: pb.Tensor) -> None:
    with pytest.raises(ProtocolError, match="saliency"):
        explanation_from(answer(saliency=saliency))


# The client: refusals before sending, and errors


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"method": "gradcam"}, "method must be one of 'occlusion', 'rise', 'activations'"),
        ({"method": "RISE"}, "method must be one of"),
        ({"model": ""}, "model must name a model"),
        ({"version": -1}, "version must be 0"),
        ({"patch": 0}, "patch must be at least 1"),
        ({"method": "rise", "masks": -5}, "masks must be at least 1"),
        ({"max_rows": 0}, "max_rows must be at least 1"),
        ({"method": "rise", "keep": 1.0}, "keep must be between 0 and 1"),
        ({"masks": 100, "keep": 0.5}, "masks, keep cannot be used with method='occlusion'"),
        ({"method": "rise", "stride": 2}, "stride cannot be used with method='rise'"),
        ({"layer": "conv1"}, "layer cannot be used with method='occlusion'"),
        ({"method": "rise", "layer": "conv1"}, "layer cannot be used with method='rise'"),
        ({"method": "activations", "patch": 3, "masks": 10}, "patch, masks cannot be used with method='activations'"),
        ({"method": "activations", "keep": 0.5}, "keep cannot be used with method='activations'"),
        ({"method": "activations", "overlay_png": True}, "overlay_png cannot be used with method='activations'"),
        ({"method": "activations", "layer": ""}, "layer must name a layer"),
    ],
)
def test_bad_arguments_raise_value_error_before_sending(
    client: Client, stand_in: StandInServer, x_png: Path, arguments: dict[str, object], complaint: str
) -> None:
    arguments = {"model": "xo", **arguments}
    with pytest.raises(ValueError, match=complaint):
        client.explain(x_png, **arguments)  # type: ignore[arg-type]
    assert stand_in.servicer.requests == []


def test_an_image_that_cannot_be_drawn_on_is_refused_before_sending(
    client: Client, stand_in: StandInServer, tmp_path: Path
) -> None:
    with pytest.raises(ImageError, match="float32"):
        client.explain(np.zeros((1, 9, 9), np.float32), model="xo")
    with pytest.raises(ImageError, match=r"missing\.png"):
        client.explain(tmp_path / "missing.png", model="xo")
    assert stand_in.servicer.requests == []


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_errors_map_as_for_classify(
    client: Client, stand_in: StandInServer, x_png: Path, code: grpc.StatusCode, error: type[Exception]
) -> None:
    stand_in.servicer.failure = code
    with pytest.raises(error, match=f"scripted {code.name}"):
        client.explain(x_png, model="xo")


def test_explain_has_a_longer_deadline_than_the_clients_default(stand_in: StandInServer, x_png: Path) -> None:
    with Client(stand_in.target, timeout=5) as client:
        client.explain(x_png, model="xo")
        client.explain(x_png, model="xo", timeout=None)
        client.explain(x_png, model="xo", timeout=20)
    default, clients, own = stand_in.servicer.time_remaining
    assert default == pytest.approx(60, abs=1), "60 s by default, whatever the client's timeout"
    assert clients == pytest.approx(5, abs=1), "None takes the client's timeout"
    assert own == pytest.approx(20, abs=1)


def test_the_options_object_builds_the_request_alone() -> None:
    options = ExplainOptions("xo", method="rise", masks=10, seed=-3, label="X")
    request = options.request(pb.Image(encoded=b"png"))
    assert request.image.encoded == b"png" and request.label == "X"
    assert (request.method, request.rise.masks, request.rise.seed) == (pb.RISE, 10, -3)
    request = ExplainOptions("digits", method="activations", layer="conv2").request(pb.Image(encoded=b"png"))
    assert (request.method, request.layer) == (pb.ACTIVATIONS, "conv2")


# What a model offers the activations method


def test_model_info_lists_the_activation_layers(client: Client) -> None:
    assert client.model("digits").activation_layers == ("conv1", "conv2")
    assert client.model("xo").activation_layers == (), "a model exported without activation outputs"
    assert [m.activation_layers for m in client.models()] == [("conv1", "conv2"), ()]


# The asyncio client


async def test_the_async_client_sends_and_parses_the_same(stand_in: StandInServer, x_png: Path) -> None:
    async with AsyncClient(stand_in.target) as client:
        explanation = await client.explain(x_png, model="xo", method="rise", masks=20, overlay_png=True)
        stand_in.servicer.failure = grpc.StatusCode.NOT_FOUND
        with pytest.raises(ModelNotFound):
            await client.explain(x_png, model="xo")
        with pytest.raises(ValueError, match="method"):
            await client.explain(x_png, model="xo", method="lime")  # type: ignore[arg-type]
    assert stand_in.servicer.requests[0].rise.masks == 20
    assert (explanation.method, explanation.overlay_png) == ("rise", OVERLAY)
    np.testing.assert_array_equal(explanation.saliency, SALIENCY)
    assert len(stand_in.servicer.requests) == 2, "the bad method was refused before sending"


async def test_the_async_client_draws_activations(stand_in: StandInServer, x_png: Path) -> None:
    async with AsyncClient(stand_in.target) as client:
        explanation = await client.explain(x_png, model="digits", method="activations", layer="conv2")
        with pytest.raises(ValueError, match="layer cannot be used with method='rise'"):
            await client.explain(x_png, model="digits", method="rise", layer="conv2")
        info = await client.model("digits")
    assert stand_in.request.layer == "conv2"
    assert (explanation.layer, explanation.activations_png, explanation.saliency) == ("conv2", GRID, None)
    assert info.activation_layers == ("conv1", "conv2")


# The command line


def test_explain_flags_parse_with_their_defaults(x_png: Path) -> None:
    args = build_parser().parse_args(["explain", str(x_png), "--model", "xo"])
    assert (args.image, args.model, args.version, args.label, args.method) == (x_png, "xo", 0, None, "occlusion")
    assert (args.patch, args.stride, args.masks, args.cells, args.keep, args.seed) == (None,) * 5 + (0,)
    assert (args.max_rows, args.png, args.npy, args.layer) == (None, None, None, None)
    assert args.timeout == 60.0, "explain's own default deadline"
    assert build_parser().parse_args(["classify", "--model", "xo", "x.png"]).timeout == 30.0, "others keep theirs"


def test_explain_flags_parse_as_given() -> None:
    argv = "explain x.png --model xo --version 2 --label O --method rise --masks 100 --cells 5 --keep 0.3 --seed 9"
    argv += " --max-rows 101 --png o.png --npy o.npy --server 10.0.0.1:8001 --timeout 120"
    args = build_parser().parse_args(argv.split())
    assert (args.version, args.label, args.method, args.seed) == (2, "O", "rise", 9)
    assert (args.masks, args.cells, args.keep, args.max_rows) == (100, 5, 0.3, 101)
    assert (args.png, args.npy) == (Path("o.png"), Path("o.npy"))
    assert (args.server, args.timeout) == ("10.0.0.1:8001", 120.0)


def test_activations_flags_parse() -> None:
    argv = ["explain", "x.png", "--model", "digits", "--method", "activations", "--layer", "conv2", "--png", "g.png"]
    args = build_parser().parse_args(argv)
    assert (args.method, args.layer, args.png) == ("activations", "conv2", Path("g.png"))


@pytest.mark.parametrize(
    "flags",
    [["--method", "gradcam"], ["--keep", "1.5"], ["--patch", "0"], ["--version", "-1"], ["--max-rows", "x"]],
)
def test_bad_explain_flags_are_usage_errors(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["explain", "x.png", "--model", "xo", *flags])
    assert exit_.value.code == 2


def explain(stand_in: StandInServer, *args: str) -> int:
    return main(["explain", "--server", stand_in.target, "--model", "xo", *args])


def test_explain_prints_the_answer_and_writes_the_files(
    stand_in: StandInServer, x_png: Path, tmp_path: Path, capsys: Capture
) -> None:
    npy, png = tmp_path / "map.npy", tmp_path / "map.png"
    assert explain(stand_in, str(x_png), "--method", "rise", "--masks", "50", "--npy", str(npy), "--png", str(png)) == 0
    out = capsys.readouterr().out
    assert f"{x_png}: X 0.750 (model xo version 3)" in out
    assert "rise: 501 forward passes, saliency 3x4 from -0.5 to 0.6" in out
    assert f"wrote {npy}" in out and f"wrote {png}" in out
    np.testing.assert_array_equal(np.load(npy), SALIENCY)
    assert png.read_bytes() == OVERLAY
    assert stand_in.request.overlay_png and stand_in.request.rise.masks == 50


def test_explain_asks_for_an_overlay_only_with_png(stand_in: StandInServer, x_png: Path, capsys: Capture) -> None:
    assert explain(stand_in, str(x_png)) == 0
    assert not stand_in.request.overlay_png
    assert "wrote" not in capsys.readouterr().out


def test_explain_activations_prints_the_layer_and_writes_the_feature_maps(
    stand_in: StandInServer, x_png: Path, tmp_path: Path, capsys: Capture
) -> None:
    grid = tmp_path / "conv2.png"
    assert explain(stand_in, str(x_png), "--method", "activations", "--layer", "conv2", "--png", str(grid)) == 0
    out = capsys.readouterr().out
    assert f"{x_png}: 1 0.750 (model xo version 3)" in out
    assert "activations: 2 forward passes, layer conv2" in out
    assert f"wrote {grid} (feature maps of layer conv2)" in out
    assert grid.read_bytes() == GRID
    assert (stand_in.request.method, stand_in.request.layer) == (pb.ACTIVATIONS, "conv2")


def test_explain_activations_without_a_layer_prints_the_one_drawn(
    stand_in: StandInServer, x_png: Path, capsys: Capture
) -> None:
    assert explain(stand_in, str(x_png), "--method", "activations") == 0
    out = capsys.readouterr().out
    assert "layer conv1" in out and "wrote" not in out
    assert stand_in.request.layer == ""


def test_explain_activations_refuses_what_it_cannot_do(
    stand_in: StandInServer, x_png: Path, tmp_path: Path, capsys: Capture
) -> None:
    npy = tmp_path / "map.npy"
    assert explain(stand_in, str(x_png), "--method", "activations", "--npy", str(npy)) == 2
    assert "makes no saliency map" in capsys.readouterr().err
    assert explain(stand_in, str(x_png), "--method", "activations", "--patch", "3") == 2
    assert "patch cannot be used with method='activations'" in capsys.readouterr().err
    assert explain(stand_in, str(x_png), "--layer", "conv1") == 2, "a layer without --method activations"
    assert "layer cannot be used with method='occlusion'" in capsys.readouterr().err
    assert stand_in.servicer.requests == [] and not npy.exists()


def test_models_shows_activation_layers_when_a_model_has_them(stand_in: StandInServer, capsys: Capture) -> None:
    assert main(["models", "--server", stand_in.target]) == 0
    header, digits, xo = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "activations"
    assert digits.split()[0] == "digits" and digits.split()[-1] == "conv1,conv2"
    assert xo.split()[0] == "xo" and "conv" not in xo
    assert main(["models", "--server", stand_in.target, "--json"]) == 0
    described = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["activation_layers"] for m in described] == [["conv1", "conv2"], []]


def test_explain_exit_codes(stand_in: StandInServer, x_png: Path, tmp_path: Path, capsys: Capture) -> None:
    assert explain(stand_in, str(x_png), "--masks", "10") == 2, "a rise option without --method rise"
    assert "masks cannot be used with method='occlusion'" in capsys.readouterr().err
    assert explain(stand_in, str(x_png), "--npy", str(tmp_path / "no" / "map.npy")) == 2
    assert "there is no folder" in capsys.readouterr().err
    assert explain(stand_in, str(tmp_path / "missing.png")) == 1
    assert "missing.png" in capsys.readouterr().err
    assert stand_in.servicer.requests == [], "nothing was sent for those"
    stand_in.servicer.failure = grpc.StatusCode.INVALID_ARGUMENT
    assert explain(stand_in, str(x_png)) == 1, "the server refused this image or these options"
    stand_in.servicer.failure = grpc.StatusCode.NOT_FOUND
    assert explain(stand_in, str(x_png)) == 3
    assert "NOT_FOUND" in capsys.readouterr().err
