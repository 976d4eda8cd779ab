"""What a model's folder says about the model it holds, beside its versions: config.toml's specification tables
and labels.txt.

A plain ONNX file says only what its graph says; these say the rest, for a model that cnnserve's exporter did
not write (`cnnserve import` writes them) or to override what an exported model embeds. The tables spell the
fields of `cnnserve.metadata.Preprocessing` with the same names and meanings (a test holds them together), all
optional; server/model_spec.py resolves them with the graph. server/model_config.py reads the file. ::

    [input]
    size = 224                  # or height and width; needed only where the graph leaves them open
    color = "BGR"               # RGB, BGR or grey
    layout = "NHWC"             # needed only where the graph cannot tell
    dtype = "uint8"             # needed only where the graph cannot tell

    [preprocessing]
    preset = "imagenet"         # imagenet, inception, unit or raw; the keys below override it
    scale = 0.00392156862745098
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    invert = false
    resize = "center_crop"      # stretch, center_crop or pad
    crop_ratio = 0.875
    background = [255, 255, 255]

    [output]
    kind = "logits"             # logits, probabilities, log_probabilities or sigmoid
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnnserve.metadata import ColorMode, InputType, Layout, OutputKind, Preset, ResizeMode

CONFIG_FILE_NAME = "config.toml"
"""A model folder's settings file, read by server/model_config.py; its tables below specify the model."""
LABELS_FILE = "labels.txt"
"""Beside a model's config.toml: one label per line, in the order of the model's output."""

_COLOR_SPELLINGS = {"grey": "L", "gray": "L", "grayscale": "L", "greyscale": "L", "l": "L", "rgb": "RGB", "bgr": "BGR"}


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    def given(self) -> dict[str, Any]:
        """The fields this table sets, by name."""
        return {name: getattr(self, name) for name in self.model_fields_set if getattr(self, name) is not None}


class InputTable(_Table):
    """What the model takes. Each is read from the graph where it fixes it."""

    size: int | None = Field(None, ge=1)
    """Height and width of a square input, in pixels. Default: from the graph."""
    height: int | None = Field(None, ge=1)
    """Input height in pixels. Default: from the graph."""
    width: int | None = Field(None, ge=1)
    """Input width in pixels. Default: from the graph."""
    color: ColorMode | None = None
    """RGB, BGR or grey (also L). Default: grey for one channel, RGB for three."""
    layout: Layout | None = None
    """NCHW or NHWC. Default: from where the graph's 1 or 3 channels sit."""
    dtype: InputType | None = None
    """float32 or uint8 (pixels as they are, 0..255). Default: the graph's input type."""

    @field_validator("color", mode="before")
    @classmethod
    def _color_spellings(cls, value: Any) -> Any:
        return _COLOR_SPELLINGS.get(_lower(value), value)

    @field_validator("layout", mode="before")
    @classmethod
    def _layout_spellings(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_spellings(cls, value: Any) -> Any:
        return _lower(value)

    @model_validator(mode="after")
    def _size_or_sides(self) -> InputTable:
        if self.size is not None and (self.height is not None or self.width is not None):
            raise ValueError("give size, or height and width, not both")
        return self

    def given(self) -> dict[str, Any]:
        values = super().given()
        size = values.pop("size", None)
        if size is not None:
            values["height"] = values["width"] = size
        return values


class PreprocessingTable(_Table):
    """How pixels become the model's input: a preset first, then the fields named here."""

    preset: Preset | None = None
    """imagenet (RGB, centre crop of 0.875, x/255, ImageNet mean and std), inception (x/127.5 - 1), unit (x/255)
    or raw (0..255). Default: unit, raw for a uint8 input."""
    scale: float | None = Field(None, gt=0)
    """Pixels (0..255) are multiplied by it first. Default: the preset's (unit: 1/255)."""
    mean: tuple[float, ...] | None = None
    """Subtracted after scaling: one value, or one per channel in the model's channel order. Default: the
    preset's (unit: 0)."""
    std: tuple[float, ...] | None = None
    """Divided by last: one value, or one per channel. Default: the preset's (unit: 1)."""
    invert: bool | None = None
    """Use 255 - pixel (for networks trained on light strokes on dark, given dark on light). Default: false."""
    resize: ResizeMode | None = None
    """stretch to the model's size; center_crop (the picture's shorter side to size / crop_ratio, then the
    centre); or pad (fit the whole picture, fill the rest with background). Default: the preset's, else
    stretch."""
    crop_ratio: float | None = Field(None, gt=0, le=1)
    """The share of the resized picture a centre crop keeps. Default: 0.875."""
    background: tuple[int, int, int] | None = None
    """R, G, B (0..255) behind transparent pixels and in padding. Default: 255, 255, 255 (white)."""

    @field_validator("preset", "resize", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("background")
    @classmethod
    def _pixel_values(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and any(not 0 <= v <= 255 for v in value):
            raise ValueError(f"background values must be 0..255, got {list(value)}")
        return value


class OutputTable(_Table):
    """What the model's output holds; the server answers probabilities whatever it is."""

    kind: OutputKind | None = None
    """logits, probabilities, log_probabilities or sigmoid (one column: P(second label)). Default: from a final
    Softmax, LogSoftmax or Sigmoid in the graph, else logits."""

    @field_validator("kind", mode="before")
    @classmethod
    def _spellings(cls, value: Any) -> Any:
        return _lower(value).replace("-", "_") if isinstance(value, str) else value


class SpecTables(_Table):
    """The specification tables of a model's config.toml (server/model_config.py reads the file)."""

    input: InputTable = InputTable()
    preprocessing: PreprocessingTable = PreprocessingTable()
    output: OutputTable = OutputTable()


@dataclass(frozen=True)
class Labels:
    """A model's labels and where they were read."""

    names: tuple[str, ...]
    source: str


def read_labels(path: Path) -> Labels:
    """Labels from a file of one label per line (trailing blank lines ignored).

    Raises ValueError for an empty file or a blank line between labels, OSError for a file that cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"{path} holds no labels; write one label per line, in the order of the model's output")
    blank = [number for number, line in enumerate(lines, start=1) if not line]
    if blank:
        raise ValueError(f"{path}: line {blank[0]} is blank; write one label per line, in the model's output order")
    return Labels(tuple(lines), str(path))
