"""`cnnserve import` and `cnnserve inspect` as a person runs them: the real command line, in a subprocess.

A model that cannot be served is refused before anything is written, with a message that says what was found
and what to do; one that can is written as the next version with its labels and config.toml, keeping what the
model folder's config.toml already said.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cnnserve.server.spec_files import InputTable, OutputTable, PreprocessingTable
from tests.plain_models import classifier_graph, save, write_labels


def cnnserve(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cnnserve", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    root.mkdir()
    return root


def test_import_help_explains_every_flag_and_its_default() -> None:
    answer = cnnserve("import", "--help")
    assert answer.returncode == 0
    text = " ".join(answer.stdout.split())
    for flag in ("--repository", "--name", "--labels", "--output-kind"):
        assert flag in text
    for table in (InputTable, PreprocessingTable):
        for name, field in table.model_fields.items():
            assert f"--{name.replace('_', '-')}" in text
            assert " ".join((field.description or "").split()) in text, name
            assert "Default:" in (field.description or ""), f"--{name} does not say its default"
    assert "Default: MODEL's file name" in text and "Exit codes" in text
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, cnnserve.cli; cnnserve.cli.build_parser(); "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]", "building the command line imports neither torch nor onnxruntime"
    assert set(OutputTable.model_fields) == {"kind"}


def test_a_plain_model_is_imported_as_the_next_version_with_its_labels_and_config(
    tmp_path: Path, repository: Path
) -> None:
    model = save(classifier_graph(layout="NHWC", size=(16, 16)), tmp_path / "keras_model.onnx")
    labels = write_labels(tmp_path / "labels.txt", 4)
    answer = cnnserve("import", model, "--repository", repository, "--labels", labels, "--color", "BGR")
    assert answer.returncode == 0, answer.stderr
    assert "imported" in answer.stdout and "keras_model version 1" in answer.stdout
    assert "layout       NHWC" in answer.stdout and "[graph]" in answer.stdout
    folder = repository / "keras_model"
    assert (folder / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert (folder / "labels.txt").read_text() == labels.read_text()
    config = tomllib.loads((folder / "config.toml").read_text())
    assert config["input"] == {"color": "BGR"}, "what the graph says is not written"
    assert config["preprocessing"]["resize"] == "stretch" and config["output"] == {"kind": "logits"}
    again = cnnserve("import", model, "--repository", repository, "--labels", labels, "--name", "keras_model")
    assert again.returncode == 0, again.stderr
    assert (folder / "2" / "model.onnx").is_file()
    rewritten = tomllib.loads((folder / "config.toml").read_text())
    assert rewritten["input"] == {"color": "RGB"}, "no --color this time: the default, written down"


def test_an_import_keeps_the_settings_and_comments_of_an_existing_config(tmp_path: Path, repository: Path) -> None:
    model = save(classifier_graph(final="Softmax"), tmp_path / "zoo.onnx")
    labels = write_labels(tmp_path / "labels.txt", 4)
    folder = repository / "zoo"
    folder.mkdir()
    (folder / "config.toml").write_text(
        "max_batch_size = 8  # our GPU's sweet spot\n\n[version_policy]\nlatest = 2\n\n"
        '[preprocessing]\npreset = "imagenet"\n\n[output]\nkind = "logits"\n'
    )
    answer = cnnserve("import", model, "--repository", repository, "--labels", labels, "--preset", "inception")
    assert answer.returncode == 0, answer.stderr
    text = (folder / "config.toml").read_text()
    assert "max_batch_size = 8  # our GPU's sweet spot" in text
    config = tomllib.loads(text)
    assert config["version_policy"] == {"latest": 2}
    assert config["preprocessing"]["scale"] == pytest.approx(1 / 127.5) and "preset" not in config["preprocessing"]
    assert "output" not in config, "the graph's final Softmax says it, so it is not written"


@pytest.mark.parametrize(
    ("model", "label_count", "messages"),
    [
        (
            classifier_graph(classes=4),
            3,
            ["labels.txt has 3 labels but the model's output 'scores' tensor(float) [batch, 4] has 4 classes",
             "write one label per class, in output order"],
        ),
        (
            classifier_graph(inputs=2),
            4,
            ["the graph takes 2 inputs ('images' tensor(float) [batch, 3, 12, 10], 'images_1'",
             "cnnserve serves models with one image input"],
        ),
        (
            classifier_graph(output_shape=["batch", 4, 1, 1]),
            4,
            ["the output 'scores' tensor(float) [batch, 4, 1, 1] is not [batch, classes]"],
        ),
        (
            classifier_graph(size=(12, 10), layout="NHWC", dtype="uint8"),
            4,
            ["a uint8 input takes the pixels as they are (0..255)"],
        ),
    ],
)  # fmt: skip
def test_a_model_that_cannot_be_served_is_refused_and_nothing_is_written(
    tmp_path: Path, repository: Path, model, label_count: int, messages: list[str]
) -> None:
    path = save(model, tmp_path / "model.onnx")
    labels = write_labels(tmp_path / "labels.txt", label_count)
    flags = ["--preset", "imagenet"] if "uint8" in messages[0] else []
    answer = cnnserve("import", path, "--repository", repository, "--name", "m", "--labels", labels, *flags)
    assert answer.returncode == 1
    assert "cnnserve import: " in answer.stderr and "cannot be served as it is" in answer.stderr
    for message in messages:
        assert message in answer.stderr
    assert not any(repository.iterdir()), "nothing may be written for a refused model"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not an ONNX file", "is not an ONNX model that ONNX Runtime can load"),
        (None, "no such file"),
    ],
)
def test_an_unreadable_file_is_refused_saying_so(tmp_path: Path, repository: Path, content, message) -> None:
    path = tmp_path / "broken.onnx"
    if content is not None:
        path.write_bytes(content)
    labels = write_labels(tmp_path / "labels.txt", 4)
    answer = cnnserve("import", path, "--repository", repository, "--labels", labels)
    assert answer.returncode == 1 and message in answer.stderr and str(path) in answer.stderr
    assert not any(repository.iterdir())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--labels", "missing.txt"], "cannot read the labels file"),
        (["--labels", "LABELS", "--name", "no/slashes"], "choose another --name"),
        (["--labels", "LABELS", "--crop-ratio", "2"], "invalid flags"),
        (["--labels", "LABELS", "--color", "purple"], "invalid flags"),
    ],
)
def test_bad_flags_are_refused_with_a_message(tmp_path: Path, repository: Path, flags, message) -> None:
    path = save(classifier_graph(), tmp_path / "model.onnx")
    labels = str(write_labels(tmp_path / "labels.txt", 4))
    answer = cnnserve("import", path, "--repository", repository, *[labels if f == "LABELS" else f for f in flags])
    assert answer.returncode in (1, 2) and message in answer.stderr
    assert not any(repository.iterdir())


def test_inspect_says_what_the_server_would_do_and_what_is_missing(tmp_path: Path, repository: Path) -> None:
    path = save(classifier_graph(layout="NHWC", dtype="uint8", batch=1, final="Softmax"), tmp_path / "tf.onnx")
    answer = cnnserve("inspect", path)
    assert answer.returncode == 1
    lines = {line[2:15].strip(): line for line in answer.stdout.splitlines() if line.startswith("  ")}
    assert "fixed at 1: served without batching" in lines["batch"]
    assert "uint8" in lines["dtype"] and "[graph]" in lines["dtype"]
    assert "[uint8 input: pixels as they are]" in lines["scale"]
    assert "probabilities" in lines["output kind"] and "[graph (ends in Softmax)]" in lines["output kind"]
    assert "not servable as it is" in answer.stdout and "no labels: write labels.txt" in answer.stdout
    labels = write_labels(tmp_path / "labels.txt", 4)
    assert cnnserve("import", path, "--repository", repository, "--labels", labels).returncode == 0
    folder = cnnserve("inspect", repository / "tf")
    assert folder.returncode == 0 and "servable as shown" in folder.stdout
    assert "[labels" not in folder.stdout and str(repository / "tf" / "labels.txt") in folder.stdout
    overridden = cnnserve("inspect", repository / "tf", "--layout", "NCHW")
    assert overridden.returncode == 1
    assert "the command line says layout NCHW, but the graph's input is 'images' tensor(uint8)" in overridden.stdout
