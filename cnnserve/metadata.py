"""What the server must know about a model beyond its graph: the one specification of a served classifier.

`export` writes these fields into the ONNX file's ``metadata_props`` and the server reads them back from the
session, so a model file is self-describing: no side files to lose, no guessing of labels or scaling. A model
that another tool wrote (torchvision, Keras through tf2onnx, a model zoo) has no such entry: the server then
builds the same `ModelMetadata` from what its graph says, its ``config.toml`` tables and its ``labels.txt``
(server/model_spec.py). Either way this module defines what the fields mean, and imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

METADATA_KEY = "cnnserve.model"
"""The one ``metadata_props`` key that holds the JSON document below."""

SCHEMA_VERSION = 1
"""Fields added since version 1 are optional, with the defaults below, so files of every release still load."""


class OutputKind(StrEnum):
    """What the model's single output holds; the server turns each into probabilities."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    LOG_PROBABILITIES = "log_probabilities"
    SIGMOID = "sigmoid"
    """One probability per row for the second of two labels (binary classifiers such as ``catsdogs``)."""


class ColorMode(StrEnum):
    """The colour a picture is converted to: Pillow's mode names, and BGR (RGB with the channels reversed)."""

    GRAYSCALE = "L"
    RGB = "RGB"
    BGR = "BGR"
    """For networks trained on OpenCV's channel order (Caffe models, many detectors' backbones)."""

    @property
    def pillow_mode(self) -> str:
        """The Pillow mode pictures are converted to; BGR's channels are reversed after that."""
        return "L" if self is ColorMode.GRAYSCALE else "RGB"

    @property
    def channels(self) -> int:
        return 1 if self is ColorMode.GRAYSCALE else 3


class Layout(StrEnum):
    """Where the channel axis of the input sits: PyTorch's NCHW or TensorFlow's NHWC."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class InputType(StrEnum):
    """The element type of the model's input tensor."""

    FLOAT32 = "float32"
    UINT8 = "uint8"
    """Pixels as they are, 0..255: the graph scales them itself (many TensorFlow and quantised models)."""


class ResizeMode(StrEnum):
    """How a picture of another shape becomes the model's height x width (Pillow, bilinear)."""

    STRETCH = "stretch"
    """Resize to exactly the model's size, whatever the picture's aspect ratio."""
    CENTER_CROP = "center_crop"
    """Resize so that the picture covers the model's size divided by `crop_ratio` (the shorter side of a
    square model's picture to size / crop_ratio), keeping its aspect ratio, then cut out the centre: torchvision's
    ``Resize(256)`` + ``CenterCrop(224)`` for a ratio of 0.875."""
    PAD = "pad"
    """Resize so that the whole picture fits, keeping its aspect ratio, and fill the rest with `background`
    (letterboxing; for a square model, padding to a square)."""


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image into the model's input tensor; `cnnserve.preprocessing` is the reference for it.

    A decoded picture is converted to ``color``, resized to ``height`` x ``width`` as ``resize`` says, its
    channels reversed for BGR and flipped (``255 - p``) when ``invert``; a float32 input is then mapped per channel
    as ``(pixel * scale - mean[c]) / std[c]`` (``mean`` and ``std`` in the model's channel order), a uint8 input
    takes the pixels as they are. The tensor is laid out as ``layout`` says. ``invert`` is for models trained on
    light strokes on a dark background (MNIST) when given dark-on-light images.

    Built objects are valid: the constructor accepts enum values as plain strings and sequences as lists, and
    raises ValueError naming the field that is wrong.
    """

    color: ColorMode
    height: int
    width: int
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    invert: bool = False
    layout: Layout = Layout.NCHW
    dtype: InputType = InputType.FLOAT32
    resize: ResizeMode = ResizeMode.STRETCH
    crop_ratio: float = 0.875
    """The share of the resized picture that a centre crop keeps; unused by the other resize modes."""
    background: tuple[int, int, int] = (255, 255, 255)
    """RGB colour behind transparent pixels and in the padding of `ResizeMode.PAD`."""

    @property
    def channels(self) -> int:
        return self.color.channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image's input tensor, without the batch axis: [C, H, W] or [H, W, C]."""
        if self.layout is Layout.NHWC:
            return (self.height, self.width, self.channels)
        return (self.channels, self.height, self.width)

    @property
    def keeps_model_sized_pictures(self) -> bool:
        """Whether a picture that already has the model's size is used as it is (no resampling): true but for a
        centre crop that keeps less than the whole picture."""
        return self.resize is not ResizeMode.CENTER_CROP or self.crop_ratio == 1.0

    def __post_init__(self) -> None:
        _coerce(self, "color", ColorMode)
        _coerce(self, "layout", Layout)
        _coerce(self, "dtype", InputType)
        _coerce(self, "resize", ResizeMode)
        for name in ("mean", "std", "background"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values for {self.color.name}, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain zero")
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ValueError(f"crop_ratio must be above 0 and at most 1, got {self.crop_ratio}")
        if len(self.background) != 3 or any(not 0 <= int(v) <= 255 for v in self.background):
            raise ValueError(f"background must be three values 0..255 (R, G, B), got {list(self.background)}")
        if self.dtype is InputType.UINT8 and (
            self.scale != 1.0 or any(m != 0 for m in self.mean) or any(s != 1 for s in self.std)
        ):
            raise ValueError(
                "a uint8 input takes the pixels as they are (0..255): scale 1, mean 0 and std 1 (the raw preset), "
                f"got scale {self.scale}, mean {list(self.mean)}, std {list(self.std)}"
            )

    def to_document(self) -> dict[str, Any]:
        """The fields as JSON values (enums as their strings, tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Preprocessing:
        """Parse what `to_document` wrote; fields added after schema version 1 may be missing.

        Raises KeyError, TypeError or ValueError for a missing or malformed field.
        """
        defaults = {name: value for name, value in document.items() if name in _OPTIONAL_PREPROCESSING_FIELDS}
        return cls(
            color=ColorMode(document["color"]),
            height=int(document["height"]),
            width=int(document["width"]),
            scale=float(document["scale"]),
            mean=tuple(float(v) for v in document["mean"]),
            std=tuple(float(v) for v in document["std"]),
            **defaults,
        )


_OPTIONAL_PREPROCESSING_FIELDS = ("invert", "layout", "dtype", "resize", "crop_ratio", "background")


def _coerce(instance: object, name: str, kind: type[StrEnum]) -> None:
    value = getattr(instance, name)
    try:
        object.__setattr__(instance, name, kind(value))
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


class Preset(StrEnum):
    """Named preprocessing recipes of common model families; `PRESETS` holds their values."""

    IMAGENET = "imagenet"
    INCEPTION = "inception"
    UNIT = "unit"
    RAW = "raw"


PRESETS: Mapping[Preset, Mapping[str, Any]] = {
    Preset.IMAGENET: {
        "color": ColorMode.RGB,
        "scale": 1.0 / 255.0,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "resize": ResizeMode.CENTER_CROP,
        "crop_ratio": 0.875,
    },
    Preset.INCEPTION: {"scale": 1.0 / 127.5, "mean": (1.0,), "std": (1.0,)},
    Preset.UNIT: {"scale": 1.0 / 255.0, "mean": (0.0,), "std": (1.0,)},
    Preset.RAW: {"scale": 1.0, "mean": (0.0,), "std": (1.0,)},
}
"""Field values of `Preprocessing` per preset. imagenet: torchvision's (RGB, shorter side to size / 0.875 then a
centre crop, x/255 normalised by ImageNet's mean and std); inception: x/127.5 - 1 (Keras' InceptionV3 and
MobileNet); unit: x/255; raw: 0..255 as they are (every uint8 input, and graphs that scale by themselves)."""


@dataclass(frozen=True)
class ActivationOutput:
    """One convolution layer's feature maps, which the graph outputs after its classifier output.

    Written by ``cnnserve train --activations`` and ``cnnserve export --activations`` so the server can draw what
    each layer sees. The constructor raises ValueError for an empty name or a shape that is not three positive
    integers.
    """

    layer: str
    """``conv1``, ``conv2``, ...: the convolutions in graph order."""
    output: str
    """The graph output's name (``activation_conv1``, ...)."""
    shape: tuple[int, int, int]
    """One image's (channels, height, width) of that output; the graph's output has a batch axis before them."""

    def __post_init__(self) -> None:
        for name in ("layer", "output"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"an activation output's {name} must be a non-empty string, got {value!r}")
        shape = tuple(self.shape)
        if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0 for v in shape):
            raise ValueError(
                f"activation output {self.output!r} needs a (channels, height, width) shape of three positive "
                f"integers, got {list(shape)}"
            )
        object.__setattr__(self, "shape", tuple(int(v) for v in shape))

    def to_document(self) -> dict[str, Any]:
        return {"layer": self.layer, "output": self.output, "shape": list(self.shape)}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ActivationOutput:
        """Parse what `to_document` wrote; raises KeyError, TypeError or ValueError for a malformed entry."""
        return cls(layer=document["layer"], output=document["output"], shape=tuple(document["shape"]))


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the server needs to know about a model beyond its graph."""

    name: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    output_kind: OutputKind
    description: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Free-form facts recorded at export (training accuracy, dataset, commit); shown, never interpreted."""
    activations: tuple[ActivationOutput, ...] = ()
    """The graph's outputs after the classifier's, in order: one per convolution layer (``--activations``);
    empty for every other model."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "activations", tuple(self.activations))
        for field_name in ("layer", "output"):
            names = [getattr(a, field_name) for a in self.activations]
            if len(set(names)) != len(names):
                raise ValueError(f"activation outputs must differ in {field_name}, got {names}")
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        if self.output_kind is OutputKind.SIGMOID and len(self.labels) != 2:
            raise ValueError("a sigmoid output needs exactly two labels (negative, positive)")

    @property
    def output_width(self) -> int:
        """Columns of the model's raw output: one per label, a single one for a sigmoid."""
        return 1 if self.output_kind is OutputKind.SIGMOID else len(self.labels)

    def to_json(self) -> str:
        """The document stored under `METADATA_KEY`; ``activations`` is written only when there are some, so the
        documents of models without them are what earlier releases wrote."""
        document = asdict(self)
        document["preprocessing"] = self.preprocessing.to_document()
        document["schema_version"] = SCHEMA_VERSION
        document["extra"] = dict(self.extra)
        del document["activations"]
        if self.activations:
            document["activations"] = [a.to_document() for a in self.activations]
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse what `to_json` wrote; raises ValueError naming what is missing or malformed."""
        try:
            document = json.loads(text)
            version = document.get("schema_version")
            if version != SCHEMA_VERSION:
                raise ValueError(f"unsupported metadata schema version {version!r}")
            return cls(
                name=document["name"],
                labels=tuple(str(label) for label in document["labels"]),
                preprocessing=Preprocessing.from_document(document["preprocessing"]),
                output_kind=OutputKind(document["output_kind"]),
                description=document.get("description", ""),
                extra={str(k): str(v) for k, v in document.get("extra", {}).items()},
                activations=tuple(ActivationOutput.from_document(a) for a in document.get("activations", ())),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed cnnserve model metadata: {exc!r}") from exc

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        if METADATA_KEY not in props:
            raise ValueError(
                f"the model has no {METADATA_KEY!r} metadata entry; export it with `cnnserve train` or "
                "`cnnserve export`, or import it with `cnnserve import`"
            )
        return cls.from_json(props[METADATA_KEY])
