"""Turning images and raw tensors into a model's input batch.

Decoding is per image (Pillow), everything after it is one vectorised operation per request: the affine map
``(pixel * scale - mean) / std`` (with the optional inversion folded in) is precomputed as ``pixel * a + b``.
Raw float32 tensors are the fast path: `numpy.frombuffer` views the request's bytes without copying. Raw uint8
pixels that already have the model's size and colour skip Pillow: they are scaled straight into the batch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cnnserve.metadata import Preprocessing
from cnnserve.server.errors import InvalidInputError

ACCEPTED_FORMATS = ("PNG", "JPEG")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class PixelTensor:
    """Raw pixels sent as a tensor: uint8, shape [H, W] or [H, W, C]."""

    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class FloatTensor:
    """An already preprocessed input: float32, shape [C, H, W] (or [1, C, H, W])."""

    shape: tuple[int, ...]
    data: bytes


ImageInput = bytes | PixelTensor | FloatTensor
"""One image of a request: encoded PNG/JPEG bytes, pixels, or a ready input tensor."""

_Part = np.ndarray | tuple[int, Image.Image]
"""One checked image on its way into the batch: a float32 [C, H, W] ready input, uint8 [H, W, C] pixels of the
model's size, or (position, picture) still to be decoded, converted or resized."""


class ImagePreprocessor:
    """Builds `(N, C, H, W)` float32 batches for one model from the images of one request."""

    def __init__(self, preprocessing: Preprocessing, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.preprocessing = preprocessing
        self.max_image_pixels = max_image_pixels
        self.input_shape = (preprocessing.channels, preprocessing.height, preprocessing.width)
        self._pixel_shape = (preprocessing.height, preprocessing.width, preprocessing.channels)
        self._float_bytes = 4 * math.prod(self.input_shape)
        channels = preprocessing.channels
        mean = np.broadcast_to(np.asarray(preprocessing.mean, np.float32), (channels,))
        std = np.broadcast_to(np.asarray(preprocessing.std, np.float32), (channels,))
        scale = np.float32(preprocessing.scale)
        if preprocessing.invert:
            gain, offset = -scale / std, (255.0 * scale - mean) / std
        else:
            gain, offset = scale / std, -mean / std
        # Pixels are laid out (N, H, W, C) until the final transpose, so the per-channel terms broadcast on C.
        self._gain = gain.astype(np.float32)
        self._offset = offset.astype(np.float32)

    def batch(self, images: Sequence[ImageInput]) -> np.ndarray:
        """The model input for `images`, in order. Raises InvalidInputError naming the offending image."""
        return self.prepare(images).finish()

    def prepare(self, images: Sequence[ImageInput]) -> PreparedImages:
        """Check every image and read the headers of encoded ones, without decoding anything yet.

        Cheap enough for the event loop; `PreparedImages.pixels` then tells whether the decoding that `finish`
        does belongs on a worker thread. Raises InvalidInputError naming the offending image.
        """
        if len(images) == 1 and isinstance(images[0], FloatTensor):
            return PreparedImages(self, [self._float_tensor(images[0], 0)], 0)
        parts: list[_Part] = []
        pixels = 0
        for position, image in enumerate(images):
            if isinstance(image, FloatTensor):
                parts.append(self._float_tensor(image, position))
                continue
            if isinstance(image, PixelTensor):
                array, model_sized = self._pixel_array(image, position)
                if model_sized:
                    parts.append(array)
                    continue
                picture = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
            else:
                picture = self._open(image, position)
            pixels += picture.width * picture.height
            parts.append((position, picture))
        return PreparedImages(self, parts, pixels)

    def _finish(self, parts: list[_Part]) -> np.ndarray:
        if len(parts) == 1 and isinstance(parts[0], np.ndarray) and parts[0].dtype == np.float32:
            return parts[0][np.newaxis]
        out = np.empty((len(parts), *self.input_shape), dtype=np.float32)
        pixel_rows: list[int] = []
        pixels: list[np.ndarray] = []
        for row, part in enumerate(parts):
            if isinstance(part, tuple):
                pixel_rows.append(row)
                pixels.append(self._model_sized(*part).reshape(self._pixel_shape))
            elif part.dtype == np.uint8:
                pixel_rows.append(row)
                pixels.append(part)
            else:
                out[row] = part
        if pixels:
            self._scale_into(out, pixel_rows, np.stack(pixels))
        return out

    def _scale_into(self, out: np.ndarray, rows: list[int], pixels: np.ndarray) -> None:
        """Write `(pixels * gain + offset)`, transposed from (N, H, W, C) to (N, C, H, W), into `out[rows]`:
        two passes over the output, straight into the batch when every row is pixels (the usual case). The
        transpose is done on the uint8 pixels first: a contiguous cast is vectorised, a strided one is not
        (about 1.7 against 2.7 ms for 32 images of 150x150 RGB here)."""
        chw = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        target = out if len(rows) == len(out) else np.empty((len(rows), *self.input_shape), np.float32)
        np.multiply(chw, self._gain.reshape(-1, 1, 1), out=target)
        target += self._offset.reshape(-1, 1, 1)
        if target is not out:
            out[rows] = target

    def _model_sized(self, position: int, picture: Image.Image) -> np.ndarray:
        """Decode (when still encoded), convert and resize one picture to the model's input size."""
        pre = self.preprocessing
        try:
            if picture.format == "JPEG":
                picture.draft(pre.color.value, (pre.width, pre.height))
            picture.load()
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for malformed bytes
            raise InvalidInputError(
                f"image {position} could not be decoded as PNG or JPEG ({exc.__class__.__name__}: {exc})"
            ) from exc
        if picture.mode != pre.color.value:
            picture = picture.convert(pre.color.value)
        if picture.size != (pre.width, pre.height):
            picture = picture.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
        return np.asarray(picture, dtype=np.uint8)

    def _open(self, data: bytes, position: int) -> Image.Image:
        """Read and check the header only; refuses decompression bombs before a pixel is decoded."""
        if not data:
            raise InvalidInputError(f"image {position} is empty; send the bytes of a PNG or JPEG file")
        try:
            picture = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for malformed bytes
            raise InvalidInputError(
                f"image {position} could not be decoded as PNG or JPEG ({exc.__class__.__name__}: {exc})"
            ) from exc
        width, height = picture.size
        if width * height > self.max_image_pixels:
            raise InvalidInputError(
                f"image {position} is {width}x{height} pixels, over the limit of {self.max_image_pixels}; "
                "downscale it before sending"
            )
        if width <= 0 or height <= 0:
            raise InvalidInputError(f"image {position} could not be decoded as PNG or JPEG: it has no pixels")
        return picture

    def _pixel_array(self, tensor: PixelTensor, position: int) -> tuple[np.ndarray, bool]:
        """The pixels and whether they already have the model's size and colour: then as uint8 [H, W, C], with
        nothing left to do but scaling; otherwise as [H, W] or [H, W, 3] for Pillow to convert and resize."""
        shape = tensor.shape
        valid_shape = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))
        if not valid_shape or any(side <= 0 for side in shape):
            raise InvalidInputError(
                f"image {position}: a UINT8 tensor must have shape [H, W] or [H, W, C] with C 1 or 3, got {shape}"
            )
        expected = math.prod(shape)  # Python ints: huge claimed shapes must not overflow
        if len(tensor.data) != expected:
            raise InvalidInputError(
                f"image {position}: shape {list(shape)} needs {expected} bytes, got {len(tensor.data)}"
            )
        if expected > self.max_image_pixels * 3:
            raise InvalidInputError(f"image {position}: {list(shape)} is over the pixel limit")
        array = np.frombuffer(tensor.data, dtype=np.uint8).reshape(shape)
        channels = 1 if array.ndim == 2 else shape[2]
        pre = self.preprocessing
        if shape[:2] == (pre.height, pre.width) and channels == pre.channels:
            return array.reshape(self._pixel_shape), True
        return (array[:, :, 0] if channels == 1 and array.ndim == 3 else array), False

    def _float_tensor(self, tensor: FloatTensor, position: int) -> np.ndarray:
        shape = tuple(tensor.shape)
        if shape not in (self.input_shape, (1, *self.input_shape)):
            raise InvalidInputError(
                f"image {position}: a FLOAT32 tensor must have the model's input shape {list(self.input_shape)}, "
                f"got {list(shape)}"
            )
        expected = self._float_bytes
        if len(tensor.data) != expected:
            raise InvalidInputError(
                f"image {position}: shape {list(shape)} as FLOAT32 needs {expected} bytes, got {len(tensor.data)}"
            )
        array = np.frombuffer(tensor.data, dtype="<f4").reshape(self.input_shape)
        if not np.isfinite(array).all():
            raise InvalidInputError(f"image {position}: the tensor contains NaN or infinity")
        return array


class PreparedImages:
    """The images of one request, checked and with headers read; `finish` decodes them into the model input."""

    def __init__(self, preprocessor: ImagePreprocessor, parts: list[_Part], pixels: int) -> None:
        self._preprocessor = preprocessor
        self._parts = parts
        self.pixels = pixels
        """Pixels that `finish` will decode or resample (0 for ready float tensors)."""

    def finish(self) -> np.ndarray:
        """The (N, C, H, W) float32 input. Raises InvalidInputError for an image whose data turns out broken."""
        return self._preprocessor._finish(self._parts)
