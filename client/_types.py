"""Typed answers of the client: plain frozen dataclasses built from the protobuf messages, so applications never
touch generated code."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnserve.client._exceptions import CnnserveClientError, ProtocolError
from cnnserve.v1 import classifier_pb2 as pb


@dataclass(frozen=True)
class Prediction:
    """One label of an answer, with its position in the model's label list and its probability."""

    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Classification:
    """The answer for one image: its top labels, most probable first.

    `label`, `index` and `probability` are those of the most probable label.
    """

    predictions: tuple[Prediction, ...]
    model: str = ""
    version: int = 0
    """The model version that answered."""
    probabilities: tuple[float, ...] = field(default=())
    """Every label's probability in label order, when `return_probabilities` was asked for; else empty."""

    @property
    def label(self) -> str:
        return self.predictions[0].label

    @property
    def index(self) -> int:
        return self.predictions[0].index

    @property
    def probability(self) -> float:
        return self.predictions[0].probability


@dataclass(frozen=True)
class ClassifyOutcome:
    """What became of one input of `classify_many`: exactly one of `classification` and `error` is set.

    `position` is the input's place in the iterable given, and `source` the input itself (a path stays a path), so
    a failure can be reported against what the caller knows.
    """

    position: int
    source: Any
    classification: Classification | None = None
    error: CnnserveClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class HealthStatus(enum.Enum):
    """grpc.health.v1 serving status; SERVICE_UNKNOWN when the server does not know the service asked about."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


@dataclass(frozen=True, eq=False)
class Explanation:
    """Where the model looked, from `Client.explain`: a saliency map of one image for one label, or (method
    "activations") one convolution layer's feature maps for the image.

    `label`, `index` and `probability` are the label explained (the top-1 label unless one was asked for), its
    position in the model's labels and its probability for the unchanged image. Explanations compare by identity
    (their maps are arrays: compare those with numpy).
    """

    model: str
    version: int
    """The model version that answered."""
    label: str
    index: int
    probability: float
    method: str
    """How it was made: "occlusion", "rise" or "activations"."""
    rows: int
    """The forward passes it took, the unchanged image included."""
    saliency: np.ndarray | None = field(repr=False)
    """float32 [H, W], the height and width of the image as sent (after its EXIF rotation), not the model's input
    size: higher where the pixel supports the label more, negative where it counts against it. What the values
    measure, per method, is documented on ExplainMethod in the API's proto file. None for "activations", which
    makes no map."""
    overlay_png: bytes | None = field(default=None, repr=False)
    """The map's positive part blended over the image, as a PNG file's bytes, when `overlay_png=True` was asked
    for; else None."""
    layer: str = ""
    """For "activations": the layer drawn (the model's first when none was asked for); else empty."""
    activations_png: bytes | None = field(default=None, repr=False)
    """For "activations": the layer's feature maps as a PNG file's bytes, a grid of one tile per channel, each
    scaled to its own range; else None."""


@dataclass(frozen=True)
class InputSpec:
    """The image a model takes, `channels` x `height` x `width`, laid out as `layout` says."""

    channels: int
    height: int
    width: int
    color: str
    """What images are converted to (a Pillow mode): "L" (grayscale), "RGB", or "BGR" (RGB, channels reversed)."""
    layout: str
    """Where the channel axis of the model's input sits: "NCHW" or "NHWC"."""
    dtype: str = "float32"
    """The element type of the model's input: "float32", or "uint8" (pixels as they are, 0..255)."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input: the picture is resized as `resize` says, then for a float32 input
    (pixel * scale - mean[c]) / std[c], after 255 - pixel when invert; a uint8 input takes the pixels as they are.

    Needed only to send tensors that are already preprocessed. The fields after `invert` take their defaults
    from servers older than them, which resize by stretching.
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    invert: bool
    resize: str = "stretch"
    """How the picture is brought to the input size: "stretch", "center_crop" (the shorter side to size /
    crop_ratio, then the centre) or "pad" (the whole picture fitted in, the rest filled with `background`)."""
    crop_ratio: float = 0.875
    """The share of the resized picture a centre crop keeps; unused by the other resize modes."""
    background: tuple[int, int, int] = (255, 255, 255)
    """R, G, B (0..255) behind transparent pixels and in the padding of "pad"."""


@dataclass(frozen=True)
class Batching:
    """The server's dynamic batching for a model."""

    max_batch_size: int
    max_queue_delay_seconds: float
    max_queue_size: int


@dataclass(frozen=True)
class ModelStatistics:
    """Counts since the version was loaded, on the server that answered (each replica counts its own)."""

    request_count: int
    inference_count: int
    execution_count: int
    batch_size_counts: dict[int, int]


@dataclass(frozen=True)
class VersionInfo:
    version: int
    state: str
    """LOADING, READY, UNAVAILABLE or FAILED."""
    ready: bool
    reason: str
    """Why the version is not ready; empty when it is."""
    execution_provider: str
    statistics: ModelStatistics
    precision: str = ""
    """What the version computes in, "fp32" or "fp16"; empty from servers older than the field."""


@dataclass(frozen=True)
class ModelInfo:
    """A model as the server describes it; `versions` newest first."""

    name: str
    description: str
    ready: bool
    input: InputSpec
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    output_kind: str
    batching: Batching
    versions: tuple[VersionInfo, ...]
    activation_layers: tuple[str, ...] = ()
    """The convolution layers whose feature maps `explain(method="activations", layer=...)` draws, first to
    last; empty for models exported without activation outputs (and from servers older than the field)."""


def classifications_from(response: pb.ClassifyResponse) -> list[Classification]:
    return [
        Classification(
            predictions=tuple(Prediction(p.label, p.index, p.probability) for p in result.top),
            model=response.model,
            version=response.version,
            probabilities=tuple(result.probabilities),
        )
        for result in response.results
    ]


_EXPLAIN_METHODS = {
    pb.EXPLAIN_METHOD_UNSPECIFIED: "occlusion",
    pb.OCCLUSION: "occlusion",
    pb.RISE: "rise",
    pb.ACTIVATIONS: "activations",
}


def explanation_from(response: pb.ExplainResponse) -> Explanation:
    """The Explanation of an answer; raises ProtocolError when it breaks the API's promises: a saliency map that
    is not a FLOAT32 [H, W] tensor, occlusion or RISE without one, activations without their PNG, or a method
    this client never asks for."""
    if response.method not in _EXPLAIN_METHODS:
        raise ProtocolError(f"the server answered with explanation method {response.method}, which was not asked for")
    method = _EXPLAIN_METHODS[response.method]
    saliency = _saliency(response.saliency) if response.HasField("saliency") else None
    if method == "activations":
        if not response.activations_png:
            raise ProtocolError("the server answered method activations without the feature maps' PNG")
    elif saliency is None:
        raise ProtocolError(f"the server answered method {method} without its saliency map")
    return Explanation(
        model=response.model,
        version=response.version,
        label=response.label,
        index=response.index,
        probability=response.probability,
        method=method,
        rows=response.rows,
        saliency=saliency,
        overlay_png=response.overlay_png or None,
        layer=response.layer,
        activations_png=response.activations_png or None,
    )


def _saliency(tensor: pb.Tensor) -> np.ndarray:
    """A FLOAT32 [H, W] tensor's little-endian bytes as a native float32 array of its own (writable)."""
    shape = tuple(tensor.shape)
    if tensor.dtype != pb.FLOAT32 or len(shape) != 2 or min(shape) < 1:
        dtype = pb.DataType.Name(tensor.dtype) if tensor.dtype in pb.DataType.values() else str(tensor.dtype)
        raise ProtocolError(f"the saliency map must be a FLOAT32 [H, W] tensor, got {dtype} {list(shape)}")
    expected = shape[0] * shape[1] * 4
    if len(tensor.data) != expected:
        raise ProtocolError(
            f"the saliency map's shape {list(shape)} needs {expected} bytes, the server sent {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype="<f4").reshape(shape).astype(np.float32)


def model_info_from(message: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=message.name,
        description=message.description,
        ready=message.ready,
        input=InputSpec(
            channels=message.input.channels,
            height=message.input.height,
            width=message.input.width,
            color=message.input.color,
            layout=message.input.layout,
            dtype=message.input.dtype or "float32",
        ),
        labels=tuple(message.labels),
        preprocessing=Preprocessing(
            scale=message.preprocessing.scale,
            mean=tuple(message.preprocessing.mean),
            std=tuple(message.preprocessing.std),
            invert=message.preprocessing.invert,
            resize=message.preprocessing.resize or "stretch",
            crop_ratio=message.preprocessing.crop_ratio or 0.875,
            background=_background(message.preprocessing.background),
        ),
        output_kind=message.output_kind,
        batching=Batching(
            max_batch_size=message.batching.max_batch_size,
            max_queue_delay_seconds=message.batching.max_queue_delay_microseconds / 1e6,
            max_queue_size=message.batching.max_queue_size,
        ),
        versions=tuple(
            VersionInfo(
                version=v.version,
                state=v.state,
                ready=v.ready,
                reason=v.reason,
                execution_provider=v.execution_provider,
                statistics=ModelStatistics(
                    request_count=v.statistics.request_count,
                    inference_count=v.statistics.inference_count,
                    execution_count=v.statistics.execution_count,
                    batch_size_counts=dict(v.statistics.batch_size_counts),
                ),
                precision=v.run.precision,
            )
            for v in message.versions
        ),
        activation_layers=tuple(message.activation_layers),
    )


def _background(values: Sequence[int]) -> tuple[int, int, int]:
    """The background colour as sent, white when the server sends none (servers older than the field)."""
    if len(values) != 3:
        return (255, 255, 255)
    red, green, blue = values
    return (red, green, blue)
