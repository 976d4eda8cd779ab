"""What an exported model tells the server about itself.

`export` writes these fields into the ONNX file's ``metadata_props`` and the server reads them back from the
session, so a model file is self-describing: no side files to lose, no guessing of labels or scaling. This module
is the single contract between the two and imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum

METADATA_KEY = "cnnserve.model"
"""The one ``metadata_props`` key that holds the JSON document below."""

SCHEMA_VERSION = 1


class OutputKind(StrEnum):
    """What the model's single output holds; the server turns each into probabilities."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    LOG_PROBABILITIES = "log_probabilities"
    SIGMOID = "sigmoid"
    """One probability per row for the second of two labels (binary classifiers such as ``catsdogs``)."""


class ColorMode(StrEnum):
    """How an encoded image is converted before scaling: Pillow's mode names."""

    GRAYSCALE = "L"
    RGB = "RGB"


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image into the model's input tensor.

    A decoded image is converted to ``color``, resized to ``height`` x ``width`` (Pillow, bilinear), laid out as
    NCHW float32 and mapped per channel as ``(pixel * scale - mean[c]) / std[c]``. ``invert`` flips pixels
    (``255 - p``) before scaling, for models trained on light strokes on a dark background (MNIST) when given
    dark-on-light images.
    """

    color: ColorMode
    height: int
    width: int
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    invert: bool = False
    layout: str = "NCHW"

    @property
    def channels(self) -> int:
        return 1 if self.color is ColorMode.GRAYSCALE else 3

    def __post_init__(self) -> None:
        if self.layout != "NCHW":
            raise ValueError(f"only NCHW layout is supported, got {self.layout!r}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain zero")


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

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        if self.output_kind is OutputKind.SIGMOID and len(self.labels) != 2:
            raise ValueError("a sigmoid output needs exactly two labels (negative, positive)")

    def to_json(self) -> str:
        document = asdict(self)
        document["schema_version"] = SCHEMA_VERSION
        document["extra"] = dict(self.extra)
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse what `to_json` wrote; raises ValueError naming what is missing or malformed."""
        try:
            document = json.loads(text)
            version = document.get("schema_version")
            if version != SCHEMA_VERSION:
                raise ValueError(f"unsupported metadata schema version {version!r}")
            pre = document["preprocessing"]
            return cls(
                name=document["name"],
                labels=tuple(str(label) for label in document["labels"]),
                preprocessing=Preprocessing(
                    color=ColorMode(pre["color"]),
                    height=int(pre["height"]),
                    width=int(pre["width"]),
                    scale=float(pre["scale"]),
                    mean=tuple(float(v) for v in pre["mean"]),
                    std=tuple(float(v) for v in pre["std"]),
                    invert=bool(pre.get("invert", False)),
                    layout=pre.get("layout", "NCHW"),
                ),
                output_kind=OutputKind(document["output_kind"]),
                description=document.get("description", ""),
                extra={str(k): str(v) for k, v in document.get("extra", {}).items()},
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed cnnserve model metadata: {exc!r}") from exc

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        if METADATA_KEY not in props:
            raise ValueError(
                f"the model has no {METADATA_KEY!r} metadata entry; export it with `cnnserve train` or "
                "`cnnserve export`"
            )
        return cls.from_json(props[METADATA_KEY])
