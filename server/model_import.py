"""`cnnserve import` and `cnnserve inspect`: bring a classifier that another tool exported into a repository.

Import checks everything before it writes anything: the file loads in ONNX Runtime, its graph has one image
input and one [batch, classes] output, the labels match the output, and pictures of several sizes run through
the server's own preprocessing in batches of one and of several. Only then does it write ``labels.txt`` and the
specification tables of ``config.toml`` (the model folder's other settings and comments are kept), and move the
file into the next version folder, the way `cnnserve export` reserves one (repository_layout). The version is
served by the next `cnnserve serve`, or by a running server at its next poll or load call.

Inspect resolves the same specification for a file or a model folder and says where each value comes from and
what is missing, and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from cnnserve.metadata import InputType, OutputKind, Preprocessing, ResizeMode
from cnnserve.repository_layout import MODEL_FILE, check_model_name, newest_model_file, next_version
from cnnserve.server.errors import ExecutionProviderError, InvalidInputError, ModelLoadError
from cnnserve.server.graph import GraphSignature
from cnnserve.server.model_config import CONFIG_FILE_NAME, ModelConfig
from cnnserve.server.model_spec import GRAPH, ModelSpec, Resolution, resolve
from cnnserve.server.postprocess import to_probabilities
from cnnserve.server.preprocess import ImagePreprocessor, PixelTensor
from cnnserve.server.runtime import LoadedSession, create_session
from cnnserve.server.session_runner import plain_runner
from cnnserve.server.settings import ExecutionProvider, RuntimeSettings
from cnnserve.server.spec_files import LABELS_FILE, Labels, SpecTables, read_labels

COMMAND_LINE = "the command line"
"""Where values given as flags come from, in messages and in the printed specification."""
_SPEC_TABLES = ("input", "preprocessing", "output")
_TRIAL_SIZES = ((64, 48), (31, 77), (300, 200))
"""(width, height) of the pictures a trial run preprocesses: landscape, portrait, larger than most inputs."""


class ImportRefused(Exception):
    """The model cannot be served as given; the message says what was found and what to do."""


@dataclass(frozen=True)
class Imported:
    """A model version written into a repository."""

    model_dir: Path
    version: int
    resolution: Resolution
    notes: list[str] = field(default_factory=list)
    """Things worth a look that do not stop the import (outputs that look like probabilities, say)."""

    @property
    def spec(self) -> ModelSpec:
        return self.resolution.spec()


def import_model(source: Path, repository: Path, name: str, labels_file: Path, tables: SpecTables) -> Imported:
    """Check `source` and write it as the next version of `repository`/`name` with `labels_file` and `tables`.

    Raises ImportRefused, naming every problem, before anything is written.
    """
    try:
        check_model_name(name)
    except ValueError as exc:
        raise ImportRefused(f"{exc}; choose another --name") from exc
    if not repository.is_dir():
        raise ImportRefused(f"the repository {repository} is not a folder; create it first (mkdir -p {repository})")
    labels = _labels(labels_file)
    loaded = open_model(source)
    graph = GraphSignature.read(loaded.session, source)
    external = _external_files(source, graph)
    resolution = resolve(graph, [(tables, COMMAND_LINE)], labels, name=name)
    if resolution.problems:
        raise ImportRefused(f"{source} cannot be served as it is:\n" + _bullets(resolution.problems))
    spec = resolution.spec()
    notes = trial_run(loaded, spec)
    model_dir = repository / name
    config_text = _config_text(model_dir / CONFIG_FILE_NAME, resolution, source)
    model_dir.mkdir(exist_ok=True)
    _write_atomically(model_dir / LABELS_FILE, "\n".join(labels.names) + "\n")
    version = _copy_as_next_version(source, external, model_dir)
    _write_atomically(model_dir / CONFIG_FILE_NAME, config_text)
    return Imported(model_dir, version, resolution, notes)


@dataclass(frozen=True)
class Inspection:
    """What the server would make of a model file, with the specification's sources and problems."""

    model_file: Path
    resolution: Resolution


def inspect_model(path: Path, tables: SpecTables, labels_file: Path | None) -> Inspection:
    """Resolve the specification of a model file, or of a repository model folder's newest version (with its
    config.toml and labels.txt); `tables` and `labels_file` override those. Raises ImportRefused when there is
    no model to look at or its files cannot be read."""
    labels: Labels | None = None
    layers: list[tuple[SpecTables, str]]
    name = path.stem
    if path.is_dir():
        model_file = newest_model_file(path)
        if model_file is None:
            raise ImportRefused(f"{path} holds no <version>/{MODEL_FILE}; give a model file or a model's folder")
        try:
            layers = [(ModelConfig.read(path), CONFIG_FILE_NAME), (tables, COMMAND_LINE)]
        except ModelLoadError as exc:
            raise ImportRefused(str(exc)) from exc
        if (path / LABELS_FILE).is_file():
            labels_file = labels_file or path / LABELS_FILE
        name = path.name
    else:
        model_file, layers = path, [(tables, COMMAND_LINE)]
    if labels_file is not None:
        labels = _labels(labels_file)
    loaded = open_model(model_file)
    graph = GraphSignature.read(loaded.session, model_file)
    return Inspection(model_file, resolve(graph, layers, labels, name=name))


def _labels(path: Path) -> Labels:
    try:
        return read_labels(path)
    except OSError as exc:
        raise ImportRefused(f"cannot read the labels file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ImportRefused(str(exc)) from exc


def open_model(path: Path) -> LoadedSession:
    """A CPU session of the model file; raises ImportRefused when it is missing or not a model ONNX Runtime runs."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    try:
        return create_session(path, RuntimeSettings(execution_provider=ExecutionProvider.CPU))
    except (ExecutionProviderError, OSError) as exc:
        raise ImportRefused(f"{path} could not be opened: {exc}") from exc
    except Exception as exc:  # onnxruntime raises its own exception types, with the reason in the message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ImportRefused(
            f"{path} is not an ONNX model that ONNX Runtime can load ({reason}); export it with torch.onnx.export, "
            "tf2onnx or your framework's ONNX exporter, and check it with `python -m onnx.checker` if you can"
        ) from exc


def trial_run(loaded: LoadedSession, spec: ModelSpec) -> list[str]:
    """Run pictures of several sizes through the server's preprocessing and the graph, one at a time and together
    (in slices of a fixed batch size). Raises ImportRefused when the graph fails or answers the wrong shape;
    returns notes about outputs that look unlike what the specification says they are."""
    preprocessor = ImagePreprocessor(spec.preprocessing)
    try:
        batch = preprocessor.batch([PixelTensor(p.shape, p.tobytes()) for p in _trial_pictures()])
    except InvalidInputError as exc:
        raise ImportRefused(f"the server's preprocessing failed on a test picture: {exc}") from exc
    width = spec.metadata.output_width
    slice_rows = spec.batch_dim or len(batch)
    runner = plain_runner(loaded.session, spec)
    try:
        alone = [runner.run(batch[row : row + 1]) for row in range(len(batch))]
        together = [runner.run(batch[i : i + slice_rows]) for i in range(0, len(batch), slice_rows)]
    except Exception as exc:  # onnxruntime's own exception types
        raise ImportRefused(f"the model failed on a batch of test pictures: {exc}") from exc
    for rows, output in [*((1, a) for a in alone), *((len(t), t) for t in together)]:
        if output.shape != (rows, width):
            raise ImportRefused(
                f"the model answered a batch of {rows} with shape {list(output.shape)}, expected [{rows}, {width}] "
                f"({len(spec.metadata.labels)} labels, {spec.metadata.output_kind.value} out)"
            )
    outputs = np.concatenate(together).astype(np.float64)
    if not np.isfinite(outputs).all():
        raise ImportRefused("the model's output holds NaN or infinity for ordinary test pictures")
    return _notes(spec, outputs, np.concatenate(alone).astype(np.float64))


def _notes(spec: ModelSpec, outputs: np.ndarray, alone: np.ndarray) -> list[str]:
    kind = spec.metadata.output_kind
    notes = []
    sums_to_one = outputs.min() >= 0 and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)
    if kind is OutputKind.LOGITS and sums_to_one and outputs.shape[1] > 1:
        notes.append(
            "the outputs are all between 0 and 1 and sum to 1: if the graph ends in a softmax, say "
            "--output-kind probabilities (the server would otherwise apply a second softmax)"
        )
    if kind is OutputKind.PROBABILITIES and not sums_to_one:
        notes.append("the outputs do not sum to 1 as probabilities do: are they logits? (--output-kind logits)")
    probabilities = to_probabilities(outputs, kind)
    if not np.allclose(probabilities, to_probabilities(alone, kind), atol=1e-4):
        notes.append(
            "the answers for a picture alone and in a batch differ: the graph mixes the images of a batch (batch "
            "statistics?), so the server's answers would depend on which requests are batched together"
        )
    return notes


def _trial_pictures() -> list[np.ndarray]:
    pictures = []
    for index, (width, height) in enumerate(_TRIAL_SIZES):
        ramp_x = np.linspace(0, 255, width)[np.newaxis, :]
        ramp_y = np.linspace(255, 0, height)[:, np.newaxis]
        red = (ramp_x + 0 * ramp_y).astype(np.uint8)
        green = (ramp_y + 0 * ramp_x).astype(np.uint8)
        blue = np.full((height, width), 40 * index, np.uint8)
        pictures.append(np.stack([red, green, blue], axis=-1))
    return pictures


def _external_files(source: Path, graph: GraphSignature) -> list[str]:
    """The model's external data files, checked to lie in its folder; raises ImportRefused otherwise."""
    for location in graph.external_data:
        relative = Path(location)
        if relative.is_absolute() or ".." in relative.parts or not (source.parent / relative).is_file():
            raise ImportRefused(
                f"{source} keeps weights in {location!r}, which is not a file beside it; keep the model's data "
                "files in its folder, or export with the weights inside (torch.onnx.export(..., external_data=False))"
            )
    return list(graph.external_data)


def _copy_as_next_version(source: Path, external: list[str], model_dir: Path) -> int:
    """Reserve the next version folder (creating it is the reservation), copy the external data files in under the
    names the model gives them, then move a full copy of `source` in as the model file."""
    while True:
        version = next_version(model_dir)
        try:
            (model_dir / str(version)).mkdir()
            break
        except FileExistsError:
            continue
    folder = model_dir / str(version)
    for location in external:
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.parent / location, folder / location)
    target = folder / MODEL_FILE
    partial = target.with_name(f".{MODEL_FILE}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return version


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _config_text(path: Path, resolution: Resolution, source: Path) -> str:
    """The model's config.toml: the existing file without its specification tables, then the new ones.

    Writes what the graph does not say (so the graph stays the one source of its facts), each with where it came
    from. Raises ImportRefused when the existing file is not valid TOML or not a valid model config.
    """
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    kept = _without_spec_tables(existing).rstrip()
    text = "\n".join(part for part in (kept, _spec_tables_text(resolution, source)) if part) + "\n"
    try:
        ModelConfig.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ImportRefused(f"{path} would not be a valid model config: {exc}; fix the existing file first") from exc
    return text


def _without_spec_tables(text: str) -> str:
    """`text` without the [input], [preprocessing] and [output] tables (each runs to the next table header)."""
    kept, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            header = stripped.split("]", 1)[0].strip("[ ")
            skipping = header in _SPEC_TABLES
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def _spec_tables_text(resolution: Resolution, source: Path) -> str:
    values, sources = resolution.values, resolution.sources
    pre: Preprocessing = resolution.spec().preprocessing

    def written(key: str) -> bool:
        return not sources[key].startswith(GRAPH)

    inputs: list[tuple[str, Any, str]] = []
    if written("height") and written("width"):
        if pre.height == pre.width:
            inputs.append(("size", pre.height, sources["height"]))
        else:
            inputs += [("height", pre.height, sources["height"]), ("width", pre.width, sources["width"])]
    inputs += [(key, values[key], sources[key]) for key in ("color", "layout", "dtype") if written(key)]
    preprocessing: list[tuple[str, Any, str]] = []
    if pre.dtype is InputType.FLOAT32 or sources["scale"] == COMMAND_LINE:
        preprocessing += [(key, values[key], sources[key]) for key in ("scale", "mean", "std")]
    preprocessing.append(("resize", pre.resize, sources["resize"]))
    if pre.resize is ResizeMode.CENTER_CROP:
        preprocessing.append(("crop_ratio", pre.crop_ratio, sources["crop_ratio"]))
    for key in ("invert", "background"):
        if sources[key] == COMMAND_LINE or values[key] != Preprocessing.__dataclass_fields__[key].default:
            preprocessing.append((key, values[key], sources[key]))
    outputs = [("kind", values["output_kind"], sources["output_kind"])] if written("output_kind") else []
    lines = [
        f"# The model's specification, written by `cnnserve import` from {source.name}. What the graph says (input",
        "# name, layout, size, element type, batch dimension, the number of classes) is read from it at each load.",
    ]
    for table, rows in (("input", inputs), ("preprocessing", preprocessing), ("output", outputs)):
        if rows:
            lines += ["", f"[{table}]"]
            lines += [f"{key} = {_toml_value(value)}  # {origin}" for key, value, origin in rows]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # StrEnums too
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r}")


def describe(resolution: Resolution) -> str:
    """The specification as the server would serve it, one field per line with where its value comes from."""
    values, sources = resolution.values, resolution.sources
    rows: list[tuple[str, str, str]] = []
    if resolution.input is not None:
        batch = (
            "dynamic: batched"
            if resolution.batch_dim is None
            else f"fixed at {resolution.batch_dim}" + (": served without batching" if resolution.batch_dim == 1 else "")
        )
        rows.append(("input", resolution.input.describe(), GRAPH))
        rows.append(("batch", batch, GRAPH))
    if resolution.output is not None:
        rows.append(("output", resolution.output.describe(), GRAPH))
    if "height" in values and "width" in values:
        origin = sources["height"] if sources["height"] == sources["width"] else "height: " + sources["height"]
        rows.append(("size", f"{values['height']}x{values['width']} (height x width)", origin))
    for key in ("color", "layout", "dtype", "scale", "mean", "std", "invert", "resize", "crop_ratio", "background"):
        if key == "crop_ratio" and values["resize"] is not ResizeMode.CENTER_CROP:
            continue
        rows.append((key, _shown(values[key]), sources[key]))
    rows.append(("output kind", _shown(values["output_kind"]), sources["output_kind"]))
    if "labels" in values:
        labels = values["labels"]
        shown = ", ".join(labels[:5]) + (f", ... ({len(labels)} in all)" if len(labels) > 5 else "")
        rows.append(("labels", shown, sources["labels"]))
    width = max(len(value) for _, value, _ in rows)
    lines = [f"  {name:<12} {value:<{min(width, 48)}}  [{origin}]" for name, value, origin in rows]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(getattr(value, "value", value))


def _bullets(problems: list[str]) -> str:
    return "\n".join(f"  - {problem}" for problem in problems)


def problems_text(resolution: Resolution) -> str:
    return _bullets(resolution.problems)
