"""Models that cnnserve's exporter did not write, imported with `cnnserve import` and served by a real server.

A PyTorch network exported with plain `torch.onnx.export`, NHWC float and uint8 graphs, a graph ending in
Softmax, a fixed-batch-1 graph and a single-sigmoid one, under every preset and resize mode. Each answer must
equal ONNX Runtime run on the reference's preprocessing of the same picture, with the preprocessing written out
here by hand, not taken from the server; and every API describes them as the graph really takes its input.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from PIL import Image

from cnnserve.metadata import ColorMode, InputType, Layout, OutputKind, Preprocessing, ResizeMode
from cnnserve.preprocessing import fit_to_model, to_model_input
from cnnserve.server.model_import import import_model
from cnnserve.server.postprocess import to_probabilities
from cnnserve.server.spec_files import SpecTables
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.plain_models import classifier_graph, export_torch_classifier, save, write_labels
from tests.servers import ServerProcess, channel_to, running_server

TOLERANCE = 1e-5
IMAGENET = {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
RAW = {"scale": 1.0, "mean": (0.0,), "std": (1.0,)}


@dataclass(frozen=True)
class Served:
    """One imported model: its file, how it was imported, and the preprocessing it must get, written by hand."""

    file: str
    flags: dict
    preprocessing: Preprocessing
    output_kind: OutputKind
    labels: int = 4


SERVED = {
    "torch_imagenet": Served(
        "torch.onnx",
        {"preprocessing": {"preset": "imagenet"}},
        Preprocessing(ColorMode.RGB, 32, 32, **IMAGENET, resize=ResizeMode.CENTER_CROP, crop_ratio=0.875),
        OutputKind.LOGITS,
        labels=5,
    ),
    "torch_inception_padded": Served(
        "torch.onnx",
        {"preprocessing": {"preset": "inception", "resize": "pad", "background": [0, 64, 128]}},
        Preprocessing(
            ColorMode.RGB, 32, 32, scale=1 / 127.5, mean=(1.0,), resize=ResizeMode.PAD, background=(0, 64, 128)
        ),
        OutputKind.LOGITS,
        labels=5,
    ),
    "torch_raw_bgr": Served(
        "torch.onnx",
        {"preprocessing": {"preset": "raw"}, "input": {"color": "BGR"}},
        Preprocessing(ColorMode.BGR, 32, 32, **RAW),
        OutputKind.LOGITS,
        labels=5,
    ),
    "keras_nhwc": Served(
        "nhwc.onnx",
        {"preprocessing": {"preset": "unit"}},
        Preprocessing(ColorMode.RGB, 16, 20, layout=Layout.NHWC),
        OutputKind.LOGITS,
    ),
    "tflite_uint8": Served(
        "uint8.onnx",
        {"preprocessing": {"resize": "center_crop", "crop_ratio": 0.75}},
        Preprocessing(
            ColorMode.RGB,
            16,
            16,
            **RAW,
            layout=Layout.NHWC,
            dtype=InputType.UINT8,
            resize="center_crop",
            crop_ratio=0.75,
        ),
        OutputKind.LOGITS,
    ),
    "zoo_softmax": Served(
        "softmax.onnx",
        {"preprocessing": {"preset": "imagenet"}},
        Preprocessing(ColorMode.RGB, 12, 10, **IMAGENET, resize=ResizeMode.CENTER_CROP),
        OutputKind.PROBABILITIES,
    ),
    "fixed_batch_grey": Served(
        "fixed.onnx",
        {"preprocessing": {"invert": True}},
        Preprocessing(ColorMode.GRAYSCALE, 14, 14, invert=True),
        OutputKind.LOG_PROBABILITIES,
    ),
    "binary_sigmoid": Served("sigmoid.onnx", {}, Preprocessing(ColorMode.RGB, 12, 10), OutputKind.SIGMOID, labels=2),
}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    export_torch_classifier(folder / "torch.onnx", classes=5, size=32)
    save(classifier_graph(layout="NHWC", size=(16, 20), seed=1), folder / "nhwc.onnx")
    save(classifier_graph(layout="NHWC", dtype="uint8", size=(16, 16), seed=2), folder / "uint8.onnx")
    save(classifier_graph(final="Softmax", seed=3), folder / "softmax.onnx")
    save(classifier_graph(channels=1, size=(14, 14), batch=1, final="LogSoftmax", seed=4), folder / "fixed.onnx")
    save(classifier_graph(final="Sigmoid", classes=1, seed=5), folder / "sigmoid.onnx")
    return folder


@pytest.fixture(scope="module")
def repository(model_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model of SERVED imported: the first through the real command line, the others by its function."""
    root = tmp_path_factory.mktemp("imported")
    first, *others = SERVED
    labels = write_labels(model_files / "labels-5.txt", 5)
    answer = subprocess.run(
        [sys.executable, "-m", "cnnserve", "import", str(model_files / SERVED[first].file), "--repository", str(root),
         "--name", first, "--labels", str(labels), "--preset", "imagenet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    for name in others:
        served = SERVED[name]
        labels = write_labels(model_files / f"labels-{served.labels}.txt", served.labels)
        tables = SpecTables.model_validate(served.flags)
        import_model(model_files / served.file, root, name, labels, tables)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(repository, "--max-queue-delay-ms", "2", workdir=tmp_path_factory.mktemp("server")) as process:
        yield process


@pytest.fixture(scope="module")
def stub(server: ServerProcess):
    with channel_to(server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def pictures() -> list[np.ndarray]:
    """RGB pictures of other sizes and shapes than any model's input, and one grey."""
    rng = np.random.default_rng(7)
    return [
        rng.integers(0, 256, (40, 30, 3), dtype=np.uint8),
        rng.integers(0, 256, (13, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64), dtype=np.uint8),
    ]


def expected_probabilities(model_file: Path, served: Served, picture: np.ndarray) -> np.ndarray:
    """ONNX Runtime on the reference preprocessing of `picture`, as a PNG decoded, into probabilities."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    decoded = Image.open(io.BytesIO(png_bytes(picture)))
    model_input = to_model_input(fit_to_model(decoded, served.preprocessing)[np.newaxis], served.preprocessing)
    (output,) = session.run(None, {session.get_inputs()[0].name: model_input})
    return to_probabilities(output, served.output_kind)[0]


@pytest.mark.parametrize("name", SERVED)
def test_answers_equal_onnx_runtime_on_the_reference_input(stub, repository: Path, name: str) -> None:
    served = SERVED[name]
    images = [pb.Image(encoded=png_bytes(p)) for p in pictures()]
    rgb = pictures()[0]
    images.append(pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=list(rgb.shape), data=rgb.tobytes())))
    answer = stub.Classify(pb.ClassifyRequest(model=name, images=images, return_probabilities=True), timeout=10)
    model_file = repository / name / "1" / "model.onnx"
    for result, picture in zip(answer.results, [*pictures(), rgb], strict=True):
        expected = expected_probabilities(model_file, served, picture)
        np.testing.assert_allclose(result.probabilities, expected, atol=TOLERANCE)
        assert result.top[0].label == f"class {int(np.argmax(expected))}"


def test_get_model_describes_an_imported_model_as_its_graph_takes_it(stub) -> None:
    info = stub.GetModel(pb.GetModelRequest(name="tflite_uint8"))
    assert (info.input.channels, info.input.height, info.input.width) == (3, 16, 16)
    assert (info.input.layout, info.input.dtype, info.input.color) == ("NHWC", "uint8", "RGB")
    assert (info.preprocessing.resize, info.preprocessing.crop_ratio) == ("center_crop", pytest.approx(0.75))
    assert info.preprocessing.scale == 1.0 and list(info.labels) == [f"class {i}" for i in range(4)]
    assert info.output_kind == "logits" and info.ready
    bgr = stub.GetModel(pb.GetModelRequest(name="torch_raw_bgr"))
    assert (bgr.input.color, bgr.input.layout, bgr.input.dtype) == ("BGR", "NCHW", "float32")
    assert list(stub.GetModel(pb.GetModelRequest(name="torch_inception_padded")).preprocessing.background) == [
        0,
        64,
        128,
    ]


def test_a_fixed_batch_graph_is_served_unbatched_and_takes_requests_of_several_images(stub) -> None:
    info = stub.GetModel(pb.GetModelRequest(name="fixed_batch_grey"))
    assert info.batching.max_batch_size == 1 and info.output_kind == "log_probabilities"
    images = [pb.Image(encoded=png_bytes(p)) for p in pictures()]
    answer = stub.Classify(pb.ClassifyRequest(model="fixed_batch_grey", images=images, top_k=2), timeout=10)
    assert len(answer.results) == 3 and all(len(r.top) == 2 for r in answer.results)


def test_the_open_inference_protocol_gives_an_imported_models_real_input(server: ServerProcess) -> None:
    with triton.InferenceServerClient(server.target) as client:
        metadata = client.get_model_metadata("tflite_uint8", as_json=True)
        config = client.get_model_config("tflite_uint8", as_json=True)["config"]
        torch_metadata = client.get_model_metadata("torch_imagenet", as_json=True)
    (tensor,) = metadata["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("images", "UINT8", ["-1", "16", "16", "3"])
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "4"]}]
    (model_input,) = config["input"]
    assert (model_input["data_type"], model_input["format"], model_input["dims"]) == (
        "TYPE_UINT8",
        "FORMAT_NHWC",
        ["16", "16", "3"],
    )
    (torch_input,) = torch_metadata["inputs"]
    assert torch_input["name"] != "input" and torch_input["shape"] == ["-1", "3", "32", "32"]
    assert torch_input["datatype"] == "FP32"


def test_cnnserve_models_lists_imported_models_like_our_own(server: ServerProcess) -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "cnnserve", "models", "--server", server.target],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    rows = {line.split()[0]: line.split() for line in answer.stdout.splitlines()[1:]}
    assert set(rows) == set(SERVED)
    assert rows["keras_nhwc"][3:5] == ["16x20x3", "RGB"] and rows["keras_nhwc"][5] == "4"
    assert rows["torch_raw_bgr"][3:6] == ["3x32x32", "BGR", "5"]
    assert rows["fixed_batch_grey"][3:5] == ["1x14x14", "L"]


def test_the_torch_export_kept_its_weights_beside_it_and_they_were_imported(repository: Path) -> None:
    version = repository / "torch_imagenet" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "torch.onnx.data"]
