"""Explanations: where a model looked, found with forward passes only, so that every served model can be explained.

Both methods perturb the picture as the client sent it (decoded and turned upright; pictures larger than twice
the model's input on a side are first scaled down to that working size), turn each perturbed copy into the
model's input exactly as a classification's image is turned (`ImagePreprocessor.batch`), and run the rows
through the model's own batcher in its background lane (server/batcher.py): below every priority level, never in
a batch with a classification, and only while no classification waits. So explanations fill idle capacity.
Rows go in chunks of `max_batch_size`, one chunk at a time, so a cancelled call submits nothing more and a
deadline is checked at every chunk by the batcher.

The score of a copy is the label's log-odds, log P(label) - log P(any other), from the model's raw output (its
logits or log-probabilities where it has them): probabilities of a confident model round to 1 in float32 and
would leave the map flat.

- Occlusion: a patch of the picture's median colour (what most of it looks like: the background of a glyph)
  slides over it; a pixel's value is the mean drop of the score over the positions whose patch covered it
  (negative where hiding it helped).
- RISE (Petsiuk et al., 2018): random on/off grids, upsampled bilinearly and shifted at random, blend the picture
  with its median colour; a pixel's value is the sum over masks of (score - mean score) times how much the
  mask kept the pixel, divided by masks x keep: how much keeping the pixel raised the score, 0 where it does not
  matter.

The map is computed at the working size and resized (bilinear) to the picture's own size.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image

from cnnserve.metadata import ActivationOutput
from cnnserve.server.errors import InvalidInputError
from cnnserve.server.model import ModelVersion
from cnnserve.server.postprocess import log_odds, to_probabilities
from cnnserve.server.preprocess import ImageInput, PixelTensor

OCCLUSION = "occlusion"
RISE = "rise"
ACTIVATIONS = "activations"
DEFAULT_RISE_MASKS = 500
DEFAULT_RISE_CELLS = 7
DEFAULT_RISE_KEEP = 0.5
SMALL_PICTURE_SIDE = 16
WORKING_SCALE = 2
"""Pictures are perturbed at no more than this many times the model's input size on each side."""
OVERLAY_MIN_SIDE = 256
"""Overlays of smaller pictures are enlarged (nearest neighbour) until their shorter side reaches this."""
FEATURE_TILE = 64
"""Feature maps smaller than this (on their longer side) are enlarged to it in the activations grid."""
_HEAT_ANCHORS = np.array([[20, 20, 120], [140, 30, 170], [230, 40, 40], [255, 150, 0], [255, 240, 40]], np.float32)


@dataclass(frozen=True)
class Occlusion:
    """Patch side and step in pixels of the picture as sent; 0: a seventh of its shorter side, half the patch."""

    name: ClassVar[str] = OCCLUSION
    patch: int = 0
    stride: int = 0


@dataclass(frozen=True)
class Rise:
    """Masks, the side of their grid, the chance of keeping a cell, the seed. 0 means the default:
    DEFAULT_RISE_MASKS, DEFAULT_RISE_KEEP, and DEFAULT_RISE_CELLS or, for pictures whose working copy is at most
    SMALL_PICTURE_SIDE on its longer side (which smoothing would blur), a cell per pixel."""

    name: ClassVar[str] = RISE
    masks: int = 0
    cells: int = 0
    keep: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Activations:
    """One convolution layer's feature maps (models exported with activation outputs); "": the first layer."""

    name: ClassVar[str] = ACTIVATIONS
    layer: str = ""


Method = Occlusion | Rise | Activations


@dataclass(frozen=True)
class Explanation:
    label: str
    index: int
    probability: float
    saliency: np.ndarray | None
    """float32 [H, W], the picture's size; None for `Activations`."""
    rows: int
    """Forward passes taken, the unchanged picture's included."""
    overlay_png: bytes | None
    layer: str = ""
    activations_png: bytes | None = None
    """For `Activations`: the layer drawn and its feature maps as a PNG grid."""


async def explain(
    model: ModelVersion,
    image: ImageInput,
    method: Method,
    *,
    label: str,
    max_rows: int,
    deadline: float,
    overlay: bool,
) -> Explanation:
    """Explain `model`'s answer `label` (empty: its top-1) for `image`.

    Raises InvalidInputError for an image that cannot be drawn on (a FLOAT32 tensor) or decoded, an unknown
    label, options out of range, or more forward passes than `max_rows`; and whatever the batcher raises
    (deadline, queue full, unavailable, a failed batch).
    """
    assert model.preprocessor is not None and model.metadata is not None and model.batching is not None
    if not isinstance(image, bytes | PixelTensor):
        raise InvalidInputError(
            "Explain needs the picture itself (encoded, or UINT8 pixels), not a preprocessed FLOAT32 tensor"
        )
    picture = await asyncio.to_thread(model.preprocessor.picture, image)
    if isinstance(method, Activations):
        return await _activations(model, picture, method.layer, label, deadline)
    pre = model.preprocessor.preprocessing
    working = _working_copy(picture, (pre.width, pre.height))
    pixels = np.asarray(working, dtype=np.float32)
    fill = np.median(pixels.reshape(-1, *pixels.shape[2:]), axis=0)
    plan = _plan(method, pixels.shape[:2], picture.size, working.width / picture.width)
    if plan.rows > max_rows:
        raise InvalidInputError(
            f"{plan.description} needs {plan.rows} forward passes, over this call's limit of {max_rows}; "
            f"{plan.advice}, or raise max_rows (up to the server's max_explanation_rows)"
        )
    metadata = model.metadata
    index = -1
    probability = base = 0.0
    for perturbed in _chunks(plan.copies(pixels, fill), model.batching.max_batch_size, first=pixels):
        inputs = await asyncio.to_thread(_model_inputs, model, perturbed)
        outputs = await model.infer(inputs, deadline, background=True, raw=True)
        if index < 0:
            unchanged = to_probabilities(outputs[:1], metadata.output_kind)[0]
            index = _label_index(label, metadata.labels, unchanged, model.name)
            probability = float(unchanged[index])
            base = float(log_odds(outputs[:1], metadata.output_kind, index)[0])
            outputs = outputs[1:]
        plan.add(log_odds(outputs, metadata.output_kind, index))
    saliency = plan.saliency(base)
    if saliency.shape != (picture.height, picture.width):
        saliency = np.asarray(
            Image.fromarray(saliency, mode="F").resize(picture.size, Image.Resampling.BILINEAR), np.float32
        )
    png = await asyncio.to_thread(overlay_png, picture, saliency) if overlay else None
    return Explanation(metadata.labels[index], index, probability, saliency, plan.rows, png)


async def _activations(
    model: ModelVersion, picture: Image.Image, layer: str, label: str, deadline: float
) -> Explanation:
    """The picture as the model sees it, once for its label and once for the layer's feature maps."""
    assert model.metadata is not None
    metadata = model.metadata
    found = _activation_output(metadata.activations, layer, model.name)
    inputs = await asyncio.to_thread(_model_inputs, model, [np.asarray(picture, np.float32)])
    outputs = await model.infer(inputs, deadline, background=True, raw=True)
    probabilities = to_probabilities(outputs, metadata.output_kind)[0]
    index = _label_index(label, metadata.labels, probabilities, model.name)
    maps = await model.infer(inputs, deadline, background=True, output=found.output)
    png = await asyncio.to_thread(feature_maps_png, maps[0])
    return Explanation(metadata.labels[index], index, float(probabilities[index]), None, 2, None, found.layer, png)


def _activation_output(activations: tuple[ActivationOutput, ...], layer: str, model: str) -> ActivationOutput:
    if not activations:
        raise InvalidInputError(
            f"model {model} was exported without activation outputs; export it again with "
            "`cnnserve train ... --activations` or `cnnserve export ... --activations` to draw its feature maps"
        )
    for activation in activations:
        if activation.layer == (layer or activations[0].layer):
            return activation
    layers = ", ".join(a.layer for a in activations)
    raise InvalidInputError(f"model {model} has no layer {layer!r} with activations; its layers are: {layers}")


def feature_maps_png(maps: np.ndarray) -> bytes:
    """A (C, H, W) layer output as a PNG grid: one tile per channel, each scaled to its own range (a channel
    that is constant everywhere stays dark), enlarged so that a tile is at least FEATURE_TILE pixels."""
    channels, height, width = maps.shape
    columns = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / columns)
    scale = max(1, math.ceil(FEATURE_TILE / max(height, width)))
    gap = 2
    sheet = np.full((rows * (height * scale + gap) + gap, columns * (width * scale + gap) + gap, 3), 255, np.uint8)
    for channel, feature in enumerate(maps.astype(np.float32)):
        low, high = float(feature.min()), float(feature.max())
        strength = (feature - low) / (high - low) if high > low else np.zeros_like(feature)
        tile = np.kron(_heat_colours(strength), np.ones((scale, scale, 1), np.float32))
        top = gap + (channel // columns) * (height * scale + gap)
        left = gap + (channel % columns) * (width * scale + gap)
        sheet[top : top + height * scale, left : left + width * scale] = np.clip(tile, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(sheet, mode="RGB").save(out, format="PNG")
    return out.getvalue()


class _Occlusion:
    """Patch positions over the working picture; scores come back in the order the copies were made."""

    def __init__(self, options: Occlusion, shape: tuple[int, int], size: tuple[int, int], scale: float) -> None:
        shorter = min(size)
        patch = options.patch or max(1, round(shorter / 7))
        stride = options.stride or max(1, patch // 2)
        if patch < 1 or stride < 1 or patch > shorter:
            raise InvalidInputError(
                f"occlusion patch {patch} and stride {stride} must be positive, and the patch at most the "
                f"picture's shorter side ({shorter} pixels)"
            )
        self._side = max(1, round(patch * scale))
        step = max(1, round(stride * scale))
        self._positions = [
            (y, x) for y in _starts(shape[0], self._side, step) for x in _starts(shape[1], self._side, step)
        ]
        self._total = np.zeros(shape, np.float64)
        self._covered = np.zeros(shape, np.float64)
        self._scored = 0
        self.rows = len(self._positions) + 1
        self.description = f"occlusion with patch {patch} and stride {stride} over this {size[0]}x{size[1]} picture"
        self.advice = "raise the stride or the patch"

    def copies(self, pixels: np.ndarray, fill: np.ndarray) -> Iterator[np.ndarray]:
        side = self._side
        for y, x in self._positions:
            copy = pixels.copy()
            copy[y : y + side, x : x + side] = fill
            yield copy

    def add(self, scores: np.ndarray) -> None:
        side = self._side
        for score in scores:
            y, x = self._positions[self._scored]
            self._total[y : y + side, x : x + side] -= score
            self._covered[y : y + side, x : x + side] += 1
            self._scored += 1

    def saliency(self, base: float) -> np.ndarray:
        """Mean drop: the unchanged score minus the mean over the patches covering each pixel (every pixel is
        covered: `_starts` ends flush with each edge)."""
        return (base + self._total / self._covered).astype(np.float32)


class _Rise:
    """Masks drawn one by one from the seed as the copies are made (so chunking never changes them), each kept
    only until its score has been added in."""

    def __init__(self, options: Rise, shape: tuple[int, int]) -> None:
        if options.masks < 0 or options.cells < 0 or not 0.0 <= options.keep < 1.0:
            raise InvalidInputError(
                f"RISE needs masks >= 1, cells >= 1 and 0 < keep < 1 (0 for any of them: its default); got masks "
                f"{options.masks}, cells {options.cells}, keep {options.keep}"
            )
        small = max(shape) <= SMALL_PICTURE_SIDE
        self._masks = options.masks or DEFAULT_RISE_MASKS
        self._cells = options.cells or (max(shape) if small else DEFAULT_RISE_CELLS)
        self._keep = options.keep or DEFAULT_RISE_KEEP
        self._seed = options.seed
        self._shape = shape
        self._waiting: deque[np.ndarray] = deque()
        self._sum = np.zeros(shape, np.float64)
        self._kept = np.zeros(shape, np.float64)
        self._score_sum = 0.0
        self.rows = self._masks + 1
        self.description = f"RISE with {self._masks} masks"
        self.advice = "ask for fewer masks"

    def copies(self, pixels: np.ndarray, fill: np.ndarray) -> Iterator[np.ndarray]:
        for mask in self._draw():
            self._waiting.append(mask)
            kept = mask if pixels.ndim == 2 else mask[..., np.newaxis]
            yield pixels * kept + fill * (1.0 - kept)

    def _draw(self) -> Iterator[np.ndarray]:
        height, width = self._shape
        cells, keep = self._cells, self._keep
        cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
        rng = np.random.default_rng(self._seed)
        for _ in range(self._masks):
            grid = (rng.random((cells, cells)) < keep).astype(np.float32)
            if cell_h == 1 and cell_w == 1:
                yield grid[:height, :width]  # a cell per pixel: nothing to smooth, nowhere to shift
                continue
            dy, dx = int(rng.integers(0, cell_h)), int(rng.integers(0, cell_w))
            big = Image.fromarray(grid, mode="F").resize(
                ((cells + 1) * cell_w, (cells + 1) * cell_h), Image.Resampling.BILINEAR
            )
            yield np.asarray(big, np.float32)[dy : dy + height, dx : dx + width]

    def add(self, scores: np.ndarray) -> None:
        for score in scores:
            mask = self._waiting.popleft()
            self._sum += float(score) * mask
            self._kept += mask
            self._score_sum += float(score)

    def saliency(self, base: float) -> np.ndarray:
        """sum_i (s_i - mean s) M_i(x) / (N keep): how much keeping x raised the score, 0 where x does not
        matter (the plain RISE sum, less the mean score times how often x was kept)."""
        centred = self._sum - (self._score_sum / self._masks) * self._kept
        return (centred / (self._masks * self._keep)).astype(np.float32)


def _plan(method: Method, shape: tuple[int, int], size: tuple[int, int], scale: float) -> _Occlusion | _Rise:
    if isinstance(method, Occlusion):
        return _Occlusion(method, shape, size, scale)
    return _Rise(method, shape)


def _starts(length: int, side: int, step: int) -> list[int]:
    """Patch starts along one side: every `step`, and one flush with the far edge so every pixel is covered."""
    last = max(0, length - side)
    starts = list(range(0, last + 1, step))
    if starts[-1] != last:
        starts.append(last)
    return starts


def _chunks(copies: Iterator[np.ndarray], size: int, first: np.ndarray) -> Iterator[list[np.ndarray]]:
    """The unchanged picture, then the perturbed copies, `size` at a time."""
    chunk = [first]
    for copy in copies:
        chunk.append(copy)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _model_inputs(model: ModelVersion, copies: list[np.ndarray]) -> np.ndarray:
    assert model.preprocessor is not None
    images = []
    for copy in copies:
        pixels = np.clip(np.rint(copy), 0, 255).astype(np.uint8)
        images.append(PixelTensor(pixels.shape, pixels.tobytes()))
    return model.preprocessor.batch(images)


def _working_copy(picture: Image.Image, model_size: tuple[int, int]) -> Image.Image:
    width, height = picture.size
    scale = min(1.0, WORKING_SCALE * model_size[0] / width, WORKING_SCALE * model_size[1] / height)
    if scale >= 1.0:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return picture.resize(size, Image.Resampling.BILINEAR)


def _label_index(label: str, labels: tuple[str, ...], probabilities: np.ndarray, model: str) -> int:
    if not label:
        return int(np.argmax(probabilities))
    try:
        return labels.index(label)
    except ValueError:
        shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise InvalidInputError(f"model {model} has no label {label!r}; its labels are: {shown}") from None


def overlay_png(picture: Image.Image, saliency: np.ndarray) -> bytes:
    """The map's positive part in heat colours over a dimmed grey copy of the picture (so that a white stroke
    and a strong score stay apart), as PNG bytes; small pictures enlarged to OVERLAY_MIN_SIDE."""
    grey = np.asarray(picture.convert("L"), np.float32)[..., np.newaxis] * 0.45
    positive = np.clip(saliency, 0, None)
    peak = float(positive.max())
    strength = positive / peak if peak > 0 else positive
    alpha = (0.9 * np.sqrt(strength))[..., np.newaxis]
    blended = grey * (1 - alpha) + _heat_colours(strength) * alpha
    overlay = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), mode="RGB")
    shorter = min(overlay.size)
    if shorter < OVERLAY_MIN_SIDE:
        factor = math.ceil(OVERLAY_MIN_SIDE / shorter)
        overlay = overlay.resize((overlay.width * factor, overlay.height * factor), Image.Resampling.NEAREST)
    out = io.BytesIO()
    overlay.save(out, format="PNG")
    return out.getvalue()


def _heat_colours(strength: np.ndarray) -> np.ndarray:
    """Dark blue through purple, red and orange to yellow, for strengths 0..1."""
    position = strength * (len(_HEAT_ANCHORS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_HEAT_ANCHORS) - 2)
    fraction = (position - low)[..., np.newaxis]
    return _HEAT_ANCHORS[low] * (1 - fraction) + _HEAT_ANCHORS[low + 1] * fraction
