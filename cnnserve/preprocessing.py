"""The reference for turning pixels into a model's input, as its `Preprocessing` (cnnserve.metadata) describes.

Training (`export`) feeds the network what these functions return, and load tests build their ready tensors
with them. The server has faster paths of its own (server/preprocess.py folds the affine map into one
multiply-add and scales uint8 pixels straight into the batch); tests/test_preprocessing_reference.py holds it
equal to this reference for every model of the catalog and every option (layouts, uint8 inputs, BGR, resize
modes), which is what keeps training and serving from drifting apart. Plain and unoptimised on purpose: numpy
for the formula, Pillow only for decoding, converting and resizing.

Two steps, so that pixels a client already holds (RGB or grey, as the image API takes them) enter the second:
`fit_to_model` makes a picture the model's size, in RGB or grey; `to_model_input` does everything after it.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import ExifTags, Image, ImageOps

from cnnserve.metadata import ColorMode, InputType, Layout, Preprocessing, ResizeMode

_RESAMPLE = Image.Resampling.BILINEAR


def fit_to_model(picture: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """`picture` at the model's size as uint8 [H, W] (grayscale) or [H, W, 3] (RGB, also for a BGR model).

    The picture is normalised first (`normalize_picture`: upright as its EXIF orientation says, transparent
    pixels composited onto `preprocessing.background`, 16-bit grey and CMYK to 8-bit). Pillow converts the colour
    next, then resizes (bilinear) as `preprocessing.resize` says: stretched to the model's size; or scaled to
    cover the model's size / crop_ratio and centre-cropped; or scaled to fit and centred on `background`. A
    picture that already has the model's size is not resampled unless a centre crop of it keeps less than all of
    it.
    """
    picture = normalize_picture(picture, preprocessing.background)
    mode = preprocessing.color.pillow_mode
    if picture.mode != mode:
        picture = picture.convert(mode)
    size = (preprocessing.width, preprocessing.height)
    if preprocessing.resize is ResizeMode.CENTER_CROP:
        picture = _cover_and_crop(picture, preprocessing)
    elif preprocessing.resize is ResizeMode.PAD:
        picture = _fit_and_pad(picture, preprocessing)
    elif picture.size != size:
        picture = picture.resize(size, _RESAMPLE)
    return np.asarray(picture, dtype=np.uint8)


def resized_size(picture_size: tuple[int, int], preprocessing: Preprocessing) -> tuple[int, int]:
    """(width, height) a picture of `picture_size` is resized to before it is cropped or padded."""
    width, height = picture_size
    target_width, target_height = preprocessing.width, preprocessing.height
    if preprocessing.resize is ResizeMode.STRETCH:
        return target_width, target_height
    if preprocessing.resize is ResizeMode.CENTER_CROP:
        ratio = preprocessing.crop_ratio
        factor = max(target_width / (ratio * width), target_height / (ratio * height))
        return max(target_width, round(width * factor)), max(target_height, round(height * factor))
    factor = min(target_width / width, target_height / height)
    return min(target_width, max(1, round(width * factor))), min(target_height, max(1, round(height * factor)))


def smallest_useful_size(preprocessing: Preprocessing) -> tuple[int, int]:
    """(width, height) that a picture may be decoded down to (JPEG's draft mode) before `fit_to_model` without
    losing what it keeps: a centre crop resizes the shorter side to size / crop_ratio first."""
    if preprocessing.resize is ResizeMode.CENTER_CROP:
        ratio = preprocessing.crop_ratio
        return math.ceil(preprocessing.width / ratio), math.ceil(preprocessing.height / ratio)
    return preprocessing.width, preprocessing.height


def _cover_and_crop(picture: Image.Image, preprocessing: Preprocessing) -> Image.Image:
    size = resized_size(picture.size, preprocessing)
    if picture.size != size:
        picture = picture.resize(size, _RESAMPLE)
    left = (size[0] - preprocessing.width) // 2
    top = (size[1] - preprocessing.height) // 2
    if (left, top) == (0, 0) and size == (preprocessing.width, preprocessing.height):
        return picture
    return picture.crop((left, top, left + preprocessing.width, top + preprocessing.height))


def _fit_and_pad(picture: Image.Image, preprocessing: Preprocessing) -> Image.Image:
    target = (preprocessing.width, preprocessing.height)
    size = resized_size(picture.size, preprocessing)
    if picture.size != size:
        picture = picture.resize(size, _RESAMPLE)
    if size == target:
        return picture
    canvas = Image.new(picture.mode, target, background_in(picture.mode, preprocessing.background))
    canvas.paste(picture, ((target[0] - size[0]) // 2, (target[1] - size[1]) // 2))
    return canvas


def background_in(mode: str, background: tuple[int, int, int]) -> int | tuple[int, ...]:
    """The RGB `background` as a pixel value of Pillow `mode` (grey as Pillow converts RGB to L)."""
    return Image.new("RGB", (1, 1), background).convert(mode).getpixel((0, 0))  # type: ignore[return-value]


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_CONVERTIBLE_MODES = frozenset({"1", "L", "P", "RGB", "I", "F"})
"""Modes that Pillow converts to both L and RGB directly; any other goes through RGB (CMYK, YCbCr, LAB...)."""


def normalize_picture(picture: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """`picture` as people see it: turned upright as its EXIF orientation says, transparent pixels (RGBA, LA, PA,
    a palette entry or grey level marked transparent) composited onto `background` (RGB), 16-bit grey scaled to
    8 bits, other colour spaces (CMYK, YCbCr...) in RGB; returned in mode 1, L, P, RGB, I or F.

    Returns `picture` itself when there is nothing to do (the usual upright, opaque, 8-bit picture). Loads a
    picture that is not loaded yet: Pillow finds a PNG's EXIF only then.
    """
    if picture.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        picture = ImageOps.exif_transpose(picture)
    if picture.mode in _SIXTEEN_BIT_MODES:
        picture = _eight_bit(picture)
    if picture.mode in _ALPHA_MODES or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        opaque = Image.new("RGB", picture.size, background)
        opaque.paste(rgba, mask=rgba.getchannel("A"))
        return opaque
    if picture.mode not in _CONVERTIBLE_MODES:
        return picture.convert("RGB")
    return picture


def _eight_bit(picture: Image.Image) -> Image.Image:
    """A 16-bit grey picture as 8-bit L (LA when a grey level is marked transparent), ``round(value / 257)``:
    Pillow's own conversion clips every value over 255 to white instead."""
    values = np.asarray(picture).astype(np.uint32)
    grey = ((values + 128) // 257).astype(np.uint8)
    transparent = picture.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1))
    return Image.fromarray(grey)


def to_model_input(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Images of the model's size, [N, H, W] or [N, H, W, C], pixel values 0 to 255 as uint8 or float, in RGB or
    grey as `fit_to_model` returns them, to the model's input [N, C, H, W] or [N, H, W, C] as its layout says.

    The channels are reversed for BGR, pixels become ``255 - pixel`` when inverted; then a float32 input is
    ``(pixel * scale - mean[c]) / std[c]``, a uint8 input the pixels as they are. Raises ValueError when the
    images' size or channel count is not the model's.
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"expected a batch of images, [N, H, W] or [N, H, W, C], got shape {images.shape}")
    expected = (preprocessing.height, preprocessing.width)
    if images.shape[1:3] != expected:
        raise ValueError(f"images are {images.shape[1:3]}, the model expects {expected}")
    pixels = images.astype(np.float32)
    pixels = pixels[..., None] if pixels.ndim == 3 else pixels
    if pixels.shape[3] != preprocessing.channels:
        raise ValueError(f"images have {pixels.shape[3]} channels, the model expects {preprocessing.channels}")
    if preprocessing.color is ColorMode.BGR:
        pixels = pixels[..., ::-1]
    if preprocessing.invert:
        pixels = 255.0 - pixels
    if preprocessing.dtype is InputType.UINT8:
        model_input = pixels.astype(np.uint8)
    else:
        mean = np.asarray(preprocessing.mean, dtype=np.float32)
        std = np.asarray(preprocessing.std, dtype=np.float32)
        model_input = (pixels * np.float32(preprocessing.scale) - mean) / std
    if preprocessing.layout is Layout.NCHW:
        model_input = model_input.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(model_input, dtype=np.float32 if preprocessing.dtype is InputType.FLOAT32 else np.uint8)
