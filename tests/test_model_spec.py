"""A model's specification, resolved from its graph, its embedded metadata, its config.toml and its labels.

Graphs are built with onnx.helper and read by real ONNX Runtime sessions; the reference preprocessing for the
options that plain models bring (NHWC, uint8 inputs, BGR, resize modes) is pinned down by hand-computed values.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from cnnserve.metadata import (
    METADATA_KEY,
    PRESETS,
    ColorMode,
    InputType,
    Layout,
    ModelMetadata,
    OutputKind,
    Preprocessing,
    Preset,
    ResizeMode,
)
from cnnserve.preprocessing import fit_to_model, to_model_input
from cnnserve.server.errors import ModelLoadError
from cnnserve.server.graph import GraphSignature
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_spec import resolve
from cnnserve.server.spec_files import InputTable, Labels, OutputTable, PreprocessingTable, SpecTables, read_labels
from tests.plain_models import classifier_graph, save

LABELS = Labels(("cat", "dog", "fox", "owl"), "labels.txt")


def signature(tmp_path: Path, model) -> GraphSignature:
    path = save(model, tmp_path / "model.onnx")
    return GraphSignature.read(ort.InferenceSession(str(path)), path)


def tables(**values) -> SpecTables:
    return SpecTables.model_validate(values)


def spec_of(tmp_path: Path, model, labels: Labels | None = LABELS, **values):
    return resolve(signature(tmp_path, model), [(tables(**values), "config.toml")], labels, name="plain").spec()


def problems_of(tmp_path: Path, model, labels: Labels | None = LABELS, **values) -> str:
    resolution = resolve(signature(tmp_path, model), [(tables(**values), "config.toml")], labels, name="plain")
    assert resolution.problems, "expected the model to be refused"
    with pytest.raises(ModelLoadError):
        resolution.spec()
    return "\n".join(resolution.problems)


def test_the_config_tables_spell_every_field_of_the_specification() -> None:
    spelled = set(InputTable.model_fields) | set(PreprocessingTable.model_fields)
    assert {f.name for f in fields(Preprocessing)} <= spelled
    assert set(OutputTable.model_fields) == {"kind"}
    assert set(Preset) == set(PRESETS)


def test_a_plain_nchw_graph_needs_only_labels(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, classifier_graph(size=(12, 10), layout="NCHW"))
    pre = spec.preprocessing
    assert (spec.input_name, spec.batch_dim) == ("images", None)
    assert (pre.layout, pre.height, pre.width, pre.color, pre.dtype) == (Layout.NCHW, 12, 10, ColorMode.RGB, "float32")
    assert (pre.scale, pre.mean, pre.std, pre.resize) == (1 / 255, (0.0,), (1.0,), ResizeMode.STRETCH)
    assert spec.metadata.output_kind is OutputKind.LOGITS and spec.metadata.labels == LABELS.names
    assert spec.sources["layout"] == "graph" and spec.sources["scale"] == "default"


def test_the_graph_says_nhwc_uint8_grey_and_a_fixed_batch(tmp_path: Path) -> None:
    model = classifier_graph(layout="NHWC", dtype="uint8", channels=1, batch=1, input_name="input_1")
    spec = spec_of(tmp_path, model)
    pre = spec.preprocessing
    assert (pre.layout, pre.dtype, pre.color, pre.input_shape) == (Layout.NHWC, InputType.UINT8, "L", (12, 10, 1))
    assert (pre.scale, pre.mean, pre.std) == (1.0, (0.0,), (1.0,)), "a uint8 input takes pixels as they are"
    assert (spec.input_name, spec.batch_dim) == ("input_1", 1)


@pytest.mark.parametrize(
    ("final", "classes", "labels", "kind"),
    [
        ("Softmax", 4, LABELS, OutputKind.PROBABILITIES),
        ("LogSoftmax", 4, LABELS, OutputKind.LOG_PROBABILITIES),
        ("Sigmoid", 1, Labels(("cat", "dog"), "labels.txt"), OutputKind.SIGMOID),
    ],
)
def test_a_final_softmax_log_softmax_or_sigmoid_says_what_the_output_holds(tmp_path, final, classes, labels, kind):
    spec = spec_of(tmp_path, classifier_graph(final=final, classes=classes), labels)
    assert spec.metadata.output_kind is kind
    assert spec.sources["output_kind"] == f"graph (ends in {final})"


def test_the_config_overrides_what_the_graph_suggests_and_the_preset(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        classifier_graph(final="Softmax"),
        input={"color": "bgr"},
        preprocessing={"preset": "imagenet", "crop_ratio": 0.9, "background": [0, 0, 0]},
        output={"kind": "logits"},
    )
    pre = spec.preprocessing
    assert (pre.color, pre.resize, pre.crop_ratio, pre.background) == ("BGR", "center_crop", 0.9, (0, 0, 0))
    assert pre.mean == (0.485, 0.456, 0.406) and spec.sources["mean"] == "preset imagenet"
    assert spec.metadata.output_kind is OutputKind.LOGITS and spec.sources["output_kind"] == "config.toml"


@pytest.mark.parametrize(
    ("preset", "scale", "mean", "std"),
    [("inception", 1 / 127.5, (1.0,), (1.0,)), ("unit", 1 / 255, (0.0,), (1.0,)), ("raw", 1.0, (0.0,), (1.0,))],
)
def test_presets_set_the_scaling(tmp_path: Path, preset, scale, mean, std) -> None:
    pre = spec_of(tmp_path, classifier_graph(), preprocessing={"preset": preset}).preprocessing
    assert (pre.scale, pre.mean, pre.std) == (scale, mean, std)
    pixels = np.array([[[[0, 127.5, 255]]]])  # [N=1, H=1, W=1, C=3]: the presets' three landmarks
    expected = {"inception": [-1, 0, 1], "unit": [0, 0.5, 1], "raw": [0, 127.5, 255]}[preset]
    small = Preprocessing(color=ColorMode.RGB, height=1, width=1, scale=scale, mean=mean, std=std)
    np.testing.assert_allclose(to_model_input(pixels, small).ravel(), expected, atol=1e-6)


def test_a_graph_that_leaves_its_size_open_needs_it_said(tmp_path: Path) -> None:
    model = classifier_graph(size=(12, 10))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "width"
    assert "leaves its height open: set size" in problems_of(tmp_path, model)
    spec = spec_of(tmp_path, model, input={"height": 12, "width": 10})
    assert (spec.preprocessing.height, spec.preprocessing.width) == (12, 10)


def test_a_graph_whose_channels_could_sit_either_way_needs_the_layout_said(tmp_path: Path) -> None:
    model = classifier_graph(size=(3, 3), channels=3)
    assert "does not show where its channels are: set layout" in problems_of(tmp_path, model)
    assert spec_of(tmp_path, model, input={"layout": "nhwc"}).preprocessing.layout is Layout.NHWC


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"input": {"layout": "NHWC"}}, "config.toml says layout NHWC, but the graph's input is 'images' "),
        ({"input": {"size": 224}}, "config.toml says height 224, but the graph's input is"),
        ({"input": {"dtype": "uint8"}}, "says dtype uint8, but the graph's input is"),
        ({"input": {"color": "grey"}}, "says color GRAYSCALE, but the graph's input 'images' float32"),
        ({"preprocessing": {"mean": [1, 2]}}, "mean needs 1 or 3 values for RGB, got 2"),
    ],
)
def test_a_config_that_contradicts_the_graph_is_refused_saying_both(tmp_path: Path, values, message) -> None:
    assert message in problems_of(tmp_path, classifier_graph(), **values).replace("tensor(float)", "float32")


def test_a_uint8_input_refuses_scaling(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, classifier_graph(dtype="uint8"), preprocessing={"preset": "imagenet"})
    assert "a uint8 input takes the pixels as they are (0..255)" in problems and "raw preset" in problems


@pytest.mark.parametrize(
    ("model", "labels", "message"),
    [
        (classifier_graph(inputs=2), LABELS, "the graph takes 2 inputs ('images' tensor(float) [batch, 3, 12, 10], "),
        (
            classifier_graph(output_shape=["batch", 4, 1, 1]),
            LABELS,
            "the output 'scores' tensor(float) [batch, 4, 1, 1] is not [batch, classes]",
        ),
        (classifier_graph(classes=5), LABELS, "labels.txt has 4 labels but the model's output 'scores' "),
        (classifier_graph(), None, "no labels: write labels.txt"),
        (classifier_graph(final="Sigmoid", classes=1), LABELS, "a single sigmoid output needs two labels"),
        (classifier_graph(final="Sigmoid", classes=4), LABELS, "comes out of a Sigmoid over several classes"),
        (classifier_graph(size=(12, 10), channels=2), LABELS, "[batch, 2, 12, 10] has no axis of 1 or 3 channels"),
    ],
)
def test_graphs_cnnserve_cannot_serve_are_refused_with_what_was_found(tmp_path, model, labels, message) -> None:
    assert message in problems_of(tmp_path, model, labels)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, classifier_graph(classes=5), input={"layout": "NHWC", "size": 64})
    assert problems.count("\n") >= 3, problems


def test_embedded_metadata_keeps_working_and_config_overrides_it(tmp_path: Path) -> None:
    embedded = ModelMetadata(
        name="ours",
        labels=("a", "b", "c", "d"),
        preprocessing=Preprocessing(color=ColorMode.RGB, height=12, width=10, mean=(0.5,), std=(0.25,)),
        output_kind=OutputKind.LOG_PROBABILITIES,
        description="exported by cnnserve",
    )
    model = classifier_graph()
    model.metadata_props.add(key=METADATA_KEY, value=embedded.to_json())
    spec = spec_of(tmp_path, model, labels=None)
    assert spec.metadata.labels == embedded.labels and spec.metadata.output_kind is OutputKind.LOG_PROBABILITIES
    assert spec.preprocessing == embedded.preprocessing and spec.metadata.description == "exported by cnnserve"
    overridden = spec_of(tmp_path, model, labels=LABELS, preprocessing={"std": [0.5]})
    assert overridden.preprocessing.std == (0.5,) and overridden.metadata.labels == LABELS.names
    assert overridden.preprocessing.mean == (0.5,) and overridden.sources["mean"] == "embedded metadata"


def test_metadata_written_before_the_new_fields_still_loads() -> None:
    old = (
        '{"name": "xo", "labels": ["O", "X"], "output_kind": "logits", "schema_version": 1, "preprocessing": '
        '{"color": "L", "height": 9, "width": 9, "scale": 0.00392, "mean": [0.5], "std": [0.5], "invert": false, '
        '"layout": "NCHW"}}'
    )
    pre = ModelMetadata.from_json(old).preprocessing
    assert (pre.dtype, pre.resize, pre.background) == (InputType.FLOAT32, ResizeMode.STRETCH, (255, 255, 255))
    full = Preprocessing(color="BGR", height=5, width=6, layout="NHWC", resize="pad", background=(1, 2, 3))
    metadata = ModelMetadata(name="m", labels=("a",), preprocessing=full, output_kind=OutputKind.PROBABILITIES)
    assert ModelMetadata.from_json(metadata.to_json()) == metadata


def test_a_config_file_takes_the_specification_tables_beside_its_other_settings(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'max_batch_size = 8\n[version_policy]\nlatest = 2\n[input]\nsize = 224\ncolor = "grey"\n'
        '[preprocessing]\npreset = "inception"\nresize = "pad"\n[output]\nkind = "probabilities"\n'
    )
    config = ModelConfig.read(tmp_path)
    assert config.max_batch_size == 8 and config.version_policy.latest == 2
    assert config.input.given() == {"height": 224, "width": 224, "color": ColorMode.GRAYSCALE}
    assert config.preprocessing.preset is Preset.INCEPTION and config.output.kind is OutputKind.PROBABILITIES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[input]\nsize = 224\nheight = 200\n", "give size, or height and width, not both"),
        ('[input]\ncolor = "purple"\n', "input.color"),
        ("[preprocessing]\ncrop_ratio = 1.5\n", "preprocessing.crop_ratio"),
        ("[preprocessing]\nbackground = [0, 0, 300]\n", "background values must be 0..255"),
        ("[output]\nscores = 3\n", "output.scores"),
    ],
)
def test_a_malformed_specification_table_fails_the_model_naming_it(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ModelLoadError, match=message):
        ModelConfig.read(tmp_path)


def test_labels_are_one_per_line_and_blank_lines_inside_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("\ufefftench\r\ngoldfish \n\n")
    assert read_labels(path).names == ("tench", "goldfish")
    path.write_text("tench\n\ngoldfish\n")
    with pytest.raises(ValueError, match="line 2 is blank"):
        read_labels(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no labels"):
        read_labels(path)


def test_the_reference_lays_out_nhwc_reverses_bgr_and_passes_uint8_through() -> None:
    pixels = np.array([[[[10, 20, 30], [40, 50, 60]]]], dtype=np.uint8)  # [N=1, H=1, W=2, C=3], RGB
    bgr = Preprocessing(color="BGR", height=1, width=2, scale=0.1, mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(to_model_input(pixels, bgr), [[[[2.0, 5.0]], [[0.0, 3.0]], [[-1.0, 0.5]]]], atol=1e-6)
    nhwc = Preprocessing(color="BGR", height=1, width=2, layout="NHWC", dtype="uint8", scale=1.0, invert=True)
    model_input = to_model_input(pixels, nhwc)
    assert model_input.dtype == np.uint8 and model_input.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(model_input, 255 - pixels[..., ::-1])


def test_a_centre_crop_resizes_the_shorter_side_to_size_over_ratio_then_cuts_the_centre() -> None:
    pre = Preprocessing(color="RGB", height=224, width=224, resize="center_crop", crop_ratio=0.875)
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    resized = picture.resize((341, 256), Image.Resampling.BILINEAR)  # torchvision's Resize(256) of 500x375
    np.testing.assert_array_equal(fit_to_model(picture, pre), np.asarray(resized.crop((58, 16, 282, 240))))


def test_padding_fits_the_whole_picture_and_fills_the_rest_with_the_background() -> None:
    pre = Preprocessing(color="RGB", height=8, width=8, resize="pad", background=(10, 20, 30))
    picture = Image.new("RGB", (16, 8), (200, 100, 50))
    fitted = fit_to_model(picture, pre)
    assert fitted.shape == (8, 8, 3)
    assert (fitted[:2] == (10, 20, 30)).all() and (fitted[6:] == (10, 20, 30)).all()
    assert (fitted[2:6] == (200, 100, 50)).all()
    grey = fit_to_model(picture, Preprocessing(color="L", height=8, width=8, resize="pad", background=(10, 20, 30)))
    assert grey[0, 0] == Image.new("RGB", (1, 1), (10, 20, 30)).convert("L").getpixel((0, 0))
