"""Turning images and raw tensors into a model's input batch: the server's fast path of `cnnserve.preprocessing`.

Decoding is per image (Pillow), everything after it is one vectorised operation per request: the reference's
affine map ``(pixel * scale - mean) / std`` (with the optional inversion folded in) is precomputed as
``pixel * a + b``. Raw float32 tensors are the fast path: `numpy.frombuffer` views the request's bytes without
copying. Raw uint8 pixels that already have the model's size and colour skip Pillow: they are scaled straight
into the batch. The batch has the model's layout (NCHW or NHWC) and element type (float32, or uint8 pixels taken
as they are), with the channels reversed for a BGR model. tests/test_preprocessing_reference.py holds every path
equal to the reference.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, TiffImagePlugin

from cnnserve.metadata import ColorMode, InputType, Layout, Preprocessing
from cnnserve.preprocessing import fit_to_model, normalize_picture, smallest_useful_size
from cnnserve.server.errors import InvalidInputError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""What Pillow may open; only the first frame of a multi-frame GIF, TIFF or WebP is ever decoded."""
_FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
"""EXIF orientations that turn the picture by 90 degrees: width and height swap."""


@dataclass(frozen=True)
class PixelTensor:
    """Raw pixels sent as a tensor: uint8, shape [H, W] or [H, W, C]."""

    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class FloatTensor:
    """An already preprocessed input: float32, the model's input shape for one image ([C, H, W] or [H, W, C], as
    its layout says), or that with a leading 1. For a uint8 model, whole numbers 0..255."""

    shape: tuple[int, ...]
    data: bytes


ImageInput = bytes | PixelTensor | FloatTensor
"""One image of a request: encoded bytes (PNG, JPEG, WebP, BMP, GIF, TIFF), pixels, or a ready input tensor."""

_Part = np.ndarray | tuple[int, Image.Image]
"""One checked image on its way into the batch: a float32 ready input of the model's input shape, uint8 [H, W, C]
pixels (RGB or grey) of the model's size, or (position, picture) still to be decoded, converted or resized."""


class ImagePreprocessor:
    """Builds the input batches of one model, (N, *input_shape) of `dtype`, from the images of one request."""

    def __init__(self, preprocessing: Preprocessing, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.preprocessing = preprocessing
        self.max_image_pixels = max_image_pixels
        self.input_shape = preprocessing.input_shape
        """One image's input tensor: [C, H, W] or [H, W, C], as the model's layout says."""
        self.dtype = np.dtype(np.uint8 if preprocessing.dtype is InputType.UINT8 else np.float32)
        self.background = preprocessing.background
        """RGB colour behind transparent pixels (and in `ResizeMode.PAD`'s padding)."""
        self._pixel_shape = (preprocessing.height, preprocessing.width, preprocessing.channels)
        self._float_bytes = 4 * math.prod(self.input_shape)
        self._channels_first = preprocessing.layout is Layout.NCHW
        self._reversed_channels = preprocessing.color is ColorMode.BGR
        self._pixels_at_model_size_are_final = preprocessing.keeps_model_sized_pictures
        self._draft_size = smallest_useful_size(preprocessing)
        channels = preprocessing.channels
        mean = np.broadcast_to(np.asarray(preprocessing.mean, np.float32), (channels,))
        std = np.broadcast_to(np.asarray(preprocessing.std, np.float32), (channels,))
        scale = np.float32(preprocessing.scale)
        if preprocessing.invert:
            gain, offset = -scale / std, (255.0 * scale - mean) / std
        else:
            gain, offset = scale / std, -mean / std
        per_channel = (-1, 1, 1) if self._channels_first else (-1,)
        self._gain = gain.astype(np.float32).reshape(per_channel)
        self._offset = offset.astype(np.float32).reshape(per_channel)

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

    def picture(self, image: bytes | PixelTensor) -> Image.Image:
        """One image as people see it, at its own size, in the model's colour mode (L or RGB): decoded in full,
        upright, opaque, 8-bit (`normalize_picture`). What Explain perturbs. Raises InvalidInputError as `batch`
        does."""
        if isinstance(image, PixelTensor):
            array, _ = self._pixel_array(image, 0)
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            picture = Image.fromarray(np.ascontiguousarray(array), mode="L" if array.ndim == 2 else "RGB")
        else:
            picture = self._decoded(0, self._open(image, 0), draft=False)
        mode = self.preprocessing.color.pillow_mode
        return picture if picture.mode == mode else picture.convert(mode)

    def _finish(self, parts: list[_Part]) -> np.ndarray:
        if len(parts) == 1 and isinstance(parts[0], np.ndarray):  # one image, sent as a tensor: the usual call
            part = parts[0]
            if part.dtype == np.float32:
                return part[np.newaxis].astype(self.dtype, copy=False)
            out = np.empty((1, *self.input_shape), dtype=self.dtype)
            self._scale_into(out, [0], part[np.newaxis])
            return out
        out = np.empty((len(parts), *self.input_shape), dtype=self.dtype)
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
        """Write the model input of `pixels` (N, H, W, C, RGB or grey) into `out[rows]`: channels reversed for BGR,
        moved first for NCHW, then ``pixels * gain + offset`` for a float32 model (or ``255 - pixels`` when a
        uint8 model inverts): one copy of the uint8 pixels in the model's layout, then one pass over the output,
        straight into the batch when every row is pixels (the usual case). The copy is done on the uint8 pixels
        because a contiguous cast is vectorised and a strided one is not (about 1.7 against 2.7 ms for 32 images
        of 150x150 RGB here)."""
        if self._reversed_channels:
            pixels = pixels[..., ::-1]
        if self._channels_first:
            pixels = pixels.transpose(0, 3, 1, 2)
        pixels = np.ascontiguousarray(pixels)
        target = out if len(rows) == len(out) else np.empty((len(rows), *self.input_shape), self.dtype)
        if self.dtype == np.uint8:
            if self.preprocessing.invert:
                np.subtract(np.uint8(255), pixels, out=target)
            else:
                target[...] = pixels
        else:
            np.multiply(pixels, self._gain, out=target)
            target += self._offset
        if target is not out:
            out[rows] = target

    def _model_sized(self, position: int, picture: Image.Image) -> np.ndarray:
        """Decode (when still encoded) and normalise one picture (`cnnserve.preprocessing.normalize_picture`:
        EXIF orientation, alpha onto the model's background, 16-bit and CMYK to 8-bit), then convert and resize it
        to the model's input size. Only the first frame of a multi-frame file is decoded."""
        return fit_to_model(self._decoded(position, picture, draft=True), self.preprocessing)

    def _decoded(self, position: int, picture: Image.Image, draft: bool) -> Image.Image:
        """The picture decoded and normalised; with `draft`, a JPEG is decoded at the smallest scale that still
        covers the model's input (its DCT scaling: far less work for a large photo)."""
        pre = self.preprocessing
        try:
            if draft and isinstance(picture, JpegImagePlugin.JpegImageFile):  # JPEG, and MPO (phone cameras)
                turned = picture.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS
                width, height = self._draft_size
                picture.draft(pre.color.pillow_mode, (height, width) if turned else (width, height))
            picture.load()
            return normalize_picture(picture, pre.background)
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for malformed bytes
            raise InvalidInputError(
                f"image {position} could not be decoded as {_FORMAT_NAMES} ({exc.__class__.__name__}: {exc})"
            ) from exc

    def _open(self, data: bytes, position: int) -> Image.Image:
        """Read and check the header only; refuses decompression bombs before a pixel is decoded: pictures (the
        first frame's size) over the pixel limit, and TIFF tiles over it (each is decoded whole, however small
        the picture)."""
        if not data:
            raise InvalidInputError(f"image {position} is empty; send the bytes of an image file ({_FORMAT_NAMES})")
        try:
            picture = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except Image.DecompressionBombError as exc:  # Pillow's own limit, far over ours: claims of 179M+ pixels
            raise InvalidInputError(
                f"image {position} is over the limit of {self.max_image_pixels} pixels ({exc}); downscale it "
                "before sending"
            ) from exc
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for malformed bytes
            raise InvalidInputError(
                f"image {position} could not be decoded as {_FORMAT_NAMES} ({exc.__class__.__name__}: {exc})"
            ) from exc
        width, height = picture.size
        if width * height > self.max_image_pixels:
            raise InvalidInputError(
                f"image {position} is {width}x{height} pixels, over the limit of {self.max_image_pixels}; "
                "downscale it before sending"
            )
        if width <= 0 or height <= 0:
            raise InvalidInputError(f"image {position} could not be decoded as {_FORMAT_NAMES}: it has no pixels")
        tile_width, tile_length = _tiff_tile_size(picture)
        if tile_width * tile_length > self.max_image_pixels:
            raise InvalidInputError(
                f"image {position} is a TIFF of {tile_width}x{tile_length}-pixel tiles, over the limit of "
                f"{self.max_image_pixels} pixels; save it in strips or smaller tiles"
            )
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
        final = self._pixels_at_model_size_are_final
        if final and shape[:2] == (pre.height, pre.width) and channels == pre.channels:
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
        if self.dtype == np.uint8 and not (np.all(array == np.round(array)) and 0 <= array.min() <= array.max() <= 255):
            raise InvalidInputError(
                f"image {position}: this model takes uint8 pixels; a FLOAT32 tensor for it must hold whole numbers "
                "0..255 (or send the pixels as a UINT8 tensor)"
            )
        return array


def _tiff_tile_size(picture: Image.Image) -> tuple[int, int]:
    """The tile size a tiled TIFF claims; (0, 0) for anything else, and for tags too broken for libtiff to use."""
    if not isinstance(picture, TiffImagePlugin.TiffImageFile):
        return 0, 0
    width, length = picture.tag_v2.get(TiffImagePlugin.TILEWIDTH), picture.tag_v2.get(TiffImagePlugin.TILELENGTH)
    return (width, length) if isinstance(width, int) and isinstance(length, int) else (0, 0)


class PreparedImages:
    """The images of one request, checked and with headers read; `finish` decodes them into the model input."""

    def __init__(self, preprocessor: ImagePreprocessor, parts: list[_Part], pixels: int) -> None:
        self._preprocessor = preprocessor
        self._parts = parts
        self.pixels = pixels
        """Pixels that `finish` will decode or resample (0 for ready float tensors)."""

    def finish(self) -> np.ndarray:
        """The model's input batch. Raises InvalidInputError for an image whose data turns out broken."""
        return self._preprocessor._finish(self._parts)
