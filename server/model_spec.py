"""A served model's specification, resolved from everything that says something about it.

The specification is `cnnserve.metadata.ModelMetadata` plus the graph's input name and batch dimension. Its
sources, weakest first:

1. defaults: those of `cnnserve.metadata.Preprocessing` (x/255, stretched to size, NCHW float32), three
   channels taken as RGB, logits out;
2. the graph: input name, layout (where the 1 or 3 channels sit), size, element type, batch dimension fixed or
   dynamic, a final Softmax, LogSoftmax or Sigmoid, and the number of classes;
3. the metadata that cnnserve's exporter embeds (``cnnserve.model`` in ``metadata_props``);
4. the model folder's config.toml tables and labels.txt (server/spec_files.py): in each layer of tables a
   preset, then the fields named; for `cnnserve import` and `cnnserve inspect`, the flags on top.

What the graph fixes cannot be overridden, only confirmed: a config that says NHWC for an NCHW graph is a
problem reported with what was found and what is expected. `resolve` collects every problem instead of stopping
at the first, so that `cnnserve inspect` can list all that is missing; `Resolution.spec` turns them into one
ModelLoadError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

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
)
from cnnserve.server.errors import ModelLoadError
from cnnserve.server.graph import ELEMENT_TYPES, GraphSignature, Tensor
from cnnserve.server.spec_files import CONFIG_FILE_NAME, LABELS_FILE, Labels, SpecTables, read_labels

FINAL_OPS = {
    "Softmax": OutputKind.PROBABILITIES,
    "LogSoftmax": OutputKind.LOG_PROBABILITIES,
    "Sigmoid": OutputKind.SIGMOID,
}
"""The output kind a graph's final operator says unambiguously."""

DEFAULT = "default"
GRAPH = "graph"
EMBEDDED = "embedded metadata"
_DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(Preprocessing) if f.default is not MISSING},
    "color": ColorMode.RGB,
    "output_kind": OutputKind.LOGITS,
}


@dataclass(frozen=True)
class ModelSpec:
    """What the server serves a model version as."""

    metadata: ModelMetadata
    input_name: str
    batch_dim: int | None
    """The graph's batch dimension when fixed (1: no batching), None when dynamic."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Field name -> where its value came from, for `cnnserve inspect` and `cnnserve import`."""
    output_name: str | None = None
    """The classifier output's name: the one output serving asks the session for (a model exported with
    activation outputs has more, computed only when Explain asks for one). None: the graph's first."""

    @property
    def preprocessing(self) -> Preprocessing:
        return self.metadata.preprocessing


@dataclass
class Resolution:
    """The specification field by field, each with where it came from, and every problem found on the way."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    input: Tensor | None = None
    output: Tensor | None = None
    batch_dim: int | None = None
    result: ModelSpec | None = None

    def put(self, name: str, value: Any, source: str) -> None:
        self.values[name] = value
        self.sources[name] = source

    def spec(self) -> ModelSpec:
        """The specification; raises ModelLoadError listing every problem when there is one."""
        if self.result is None:
            raise ModelLoadError("; ".join(self.problems) or "the model could not be specified")
        return self.result


class _Session(Protocol):
    def get_inputs(self) -> Any: ...
    def get_outputs(self) -> Any: ...
    def get_modelmeta(self) -> Any: ...


def load_spec(session: _Session, model_file: Path, tables: SpecTables, name: str) -> ModelSpec:
    """The specification of the model version in `model_file` (a version folder's model file), read
    from its graph, its embedded metadata, `tables` (its config.toml) and <name>/labels.txt.

    Raises ModelLoadError naming every problem.
    """
    labels_file = model_file.parent.parent / LABELS_FILE
    labels = None
    if labels_file.is_file():
        try:
            labels = read_labels(labels_file)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
    return resolve(GraphSignature.read(session, model_file), [(tables, CONFIG_FILE_NAME)], labels, name=name).spec()


def resolve(
    graph: GraphSignature, layers: Sequence[tuple[SpecTables, str]], labels: Labels | None, *, name: str
) -> Resolution:
    """Resolve the specification of the model `graph` describes, with `layers` of tables over it, each named by
    where it came from ("config.toml", "the command line"), later ones winning: in each its preset, then the
    fields it sets."""
    found = Resolution()
    for key, value in _DEFAULTS.items():
        found.put(key, value, DEFAULT)
    embedded = _embedded(graph, found)
    if embedded is not None:
        for key, value in vars(embedded.preprocessing).items():
            found.put(key, value, EMBEDDED)
        found.put("output_kind", embedded.output_kind, EMBEDDED)
    for tables, origin in layers:
        preset = tables.preprocessing.preset
        if preset is not None:
            for key, value in PRESETS[preset].items():
                found.put(key, value, f"preset {preset.value}")
        explicit = {**tables.input.given(), **tables.preprocessing.given(), **tables.output.given()}
        explicit.pop("preset", None)
        if "kind" in explicit:
            explicit["output_kind"] = explicit.pop("kind")
        for key, value in explicit.items():
            found.put(key, value, origin)
    if _check_signature(graph, found, embedded):
        _settle_input(found, stated={EMBEDDED, *(origin for _, origin in layers)})
        _settle_output(graph, found)
    _settle_labels(found, labels, embedded)
    if found.problems:
        return found
    _build(found, name, embedded)
    return found


def _embedded(graph: GraphSignature, found: Resolution) -> ModelMetadata | None:
    if METADATA_KEY not in graph.metadata_props:
        return None
    try:
        return ModelMetadata.from_metadata_props(graph.metadata_props)
    except ValueError as exc:
        found.problems.append(f"the embedded {METADATA_KEY!r} metadata cannot be read: {exc}")
        return None


def _check_signature(graph: GraphSignature, found: Resolution, embedded: ModelMetadata | None) -> bool:
    """One image input, one [batch, classes] output (and, after it, the activation outputs that the embedded
    metadata lists, if any); records the problems and returns whether it is so."""
    ok = True
    if len(graph.inputs) != 1:
        listed = ", ".join(t.describe() for t in graph.inputs) or "none"
        found.problems.append(
            f"the graph takes {len(graph.inputs)} inputs ({listed}); cnnserve serves models with one image input"
        )
        ok = False
    else:
        found.input = graph.inputs[0]
        if len(found.input.shape) != 4:
            found.problems.append(
                f"the input {found.input.describe()} is not a batch of images: expected "
                "[batch, channels, height, width] or [batch, height, width, channels]"
            )
            ok = False
    activations = [a.output for a in embedded.activations] if embedded is not None else []
    if len(graph.outputs) != 1 and [t.name for t in graph.outputs[1:]] != activations:
        listed = ", ".join(t.describe() for t in graph.outputs) or "none"
        found.problems.append(
            f"the graph has {len(graph.outputs)} outputs ({listed}); cnnserve serves a classifier's single "
            "[batch, classes] output"
        )
        ok = False
    else:
        found.output = graph.outputs[0]
        if len(found.output.shape) != 2:
            found.problems.append(
                f"the output {found.output.describe()} is not [batch, classes]: cnnserve serves classifiers whose "
                "one output holds a score per class (flatten or squeeze it in the graph)"
            )
            ok = False
    return ok


def graph_layout(tensor: Tensor) -> Layout | None:
    """NCHW or NHWC from where a 4-D input's 1 or 3 channels sit; None when the shape cannot tell."""
    second, last = tensor.shape[1], tensor.shape[3]
    channels_second = second in (1, 3)
    channels_last = last in (1, 3)
    if channels_second and not channels_last:
        return Layout.NCHW
    if channels_last and not channels_second:
        return Layout.NHWC
    return None


def _settle_input(found: Resolution, stated: set[str]) -> None:
    """Reconcile what was said about the input with what the graph fixes; the graph wins over defaults and
    presets, and disagreeing with a stated value is a problem."""
    tensor = found.input
    assert tensor is not None
    facts: dict[str, Any] = {}
    layout = graph_layout(tensor)
    if layout is not None:
        facts["layout"] = layout
    elif tensor.fixed(1) not in (None, 1, 3) and tensor.fixed(3) not in (None, 1, 3):
        found.problems.append(
            f"the input {tensor.describe()} has no axis of 1 or 3 channels: cnnserve feeds grey or colour images, "
            "[batch, channels, height, width] or [batch, height, width, channels]"
        )
        return
    elif found.sources["layout"] not in stated:
        found.problems.append(
            f"the input {tensor.describe()} does not show where its channels are: set layout (NCHW or NHWC)"
        )
        return
    axes = (1, 2, 3) if (layout or found.values["layout"]) is Layout.NCHW else (3, 1, 2)
    channels, height, width = (tensor.fixed(axis) for axis in axes)
    if height is not None:
        facts["height"] = height
    if width is not None:
        facts["width"] = width
    if tensor.element_type in ELEMENT_TYPES:
        facts["dtype"] = InputType(ELEMENT_TYPES[tensor.element_type])
    else:
        found.problems.append(
            f"the input {tensor.describe()} is of {tensor.element_type}; cnnserve feeds float32 or uint8 inputs"
        )
    for key, fact in facts.items():
        if key not in found.values or found.sources[key] not in stated:
            found.put(key, fact, GRAPH)
        elif found.values[key] != fact:
            found.problems.append(
                f"{found.sources[key]} says {key} {_shown(found.values[key])}, but the graph's input is "
                f"{tensor.describe()} ({key} {_shown(fact)})"
            )
    for key in ("height", "width"):
        if key not in found.values:
            found.problems.append(
                f"the input {tensor.describe()} leaves its {key} open: set size (or height and width)"
            )
    if channels is not None and channels not in (1, 3):
        found.problems.append(f"the input {tensor.describe()} has {channels} channels; cnnserve feeds 1 or 3")
    elif channels is not None and found.values["color"].channels != channels:
        if found.sources["color"] in stated:
            found.problems.append(
                f"{found.sources['color']} says color {found.values['color'].name}, but the graph's input "
                f"{tensor.describe()} has {channels} channel{'s' if channels > 1 else ''}"
            )
        else:
            found.put("color", ColorMode.GRAYSCALE if channels == 1 else ColorMode.RGB, GRAPH)
    if found.values["dtype"] is InputType.UINT8:
        for key, value in PRESETS[Preset.RAW].items():
            if found.sources[key] == DEFAULT:
                found.put(key, value, "uint8 input: pixels as they are")
    batch = tensor.shape[0]
    found.batch_dim = batch if isinstance(batch, int) and batch > 0 else None


def _settle_output(graph: GraphSignature, found: Resolution) -> None:
    tensor = found.output
    assert tensor is not None
    op = graph.final_ops.get(tensor.name)
    classes = tensor.fixed(1)
    if found.sources["output_kind"] != DEFAULT:
        return
    if op in FINAL_OPS and not (op == "Sigmoid" and classes != 1):
        found.put("output_kind", FINAL_OPS[op], f"{GRAPH} (ends in {op})")
    elif op == "Sigmoid":
        found.problems.append(
            f"the output {tensor.describe()} comes out of a Sigmoid over several classes (multi-label scores); "
            "cnnserve ranks one label per image: set the output kind (probabilities ranks them as they are)"
        )
    elif op is not None:
        found.sources["output_kind"] = f"{DEFAULT} (the graph ends in {op})"


def _settle_labels(found: Resolution, labels: Labels | None, embedded: ModelMetadata | None) -> None:
    if labels is None and embedded is not None:
        labels = Labels(embedded.labels, EMBEDDED)
    tensor = found.output
    classes = tensor.fixed(1) if tensor is not None and len(tensor.shape) == 2 else None
    output = f"the model's output {tensor.describe()}" if tensor is not None else "the model's output"
    if labels is None:
        count = f"; the output has {classes} classes" if classes else ""
        found.problems.append(
            f"no labels: write {LABELS_FILE} beside config.toml (cnnserve import --labels FILE), one label per "
            f"line in the order of the model's output{count}"
        )
        return
    found.put("labels", labels.names, labels.source)
    if found.values["output_kind"] is OutputKind.SIGMOID:
        if classes not in (None, 1):
            found.problems.append(f"a sigmoid output has one column, {output} has {classes}")
        if len(labels.names) != 2:
            found.problems.append(
                f"a single sigmoid output needs two labels, negative then positive; {labels.source} has "
                f"{len(labels.names)}"
            )
    elif classes is not None and len(labels.names) != classes:
        found.problems.append(
            f"{labels.source} has {len(labels.names)} labels but {output} has {classes} classes: write one label "
            "per class, in output order"
        )


def _build(found: Resolution, name: str, embedded: ModelMetadata | None) -> None:
    assert found.input is not None
    values = found.values
    try:
        preprocessing = Preprocessing(**{f.name: values[f.name] for f in fields(Preprocessing)})
        metadata = ModelMetadata(
            name=name,
            labels=values["labels"],
            preprocessing=preprocessing,
            output_kind=values["output_kind"],
            description=embedded.description if embedded is not None else "",
            extra=dict(embedded.extra) if embedded is not None else {},
            activations=embedded.activations if embedded is not None else (),
        )
    except ValueError as exc:
        found.problems.append(str(exc))
        return
    assert found.output is not None
    found.result = ModelSpec(
        metadata, found.input.name, found.batch_dim, dict(found.sources), output_name=found.output.name
    )


def _shown(value: Any) -> str:
    return str(getattr(value, "value", value))
