"""Turning what applications hold (paths, bytes, PIL images, numpy arrays) into request images.

Encoded files (PNG, JPEG, WebP, BMP, GIF, TIFF) are sent as they are: the server decodes them, turns them upright
as their EXIF orientation says and composites transparent pixels onto the model's background. Pillow images are
turned upright here (their EXIF would not travel); in mode L or RGB they are sent as raw pixels, as are uint8
arrays, which spares an encode on this side and a decode on the server; in other modes they are encoded
losslessly (PNG, or TIFF for CMYK and the like). float32 arrays are the model's input, already preprocessed,
shape [C, H, W].
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np

from cnnserve.client._exceptions import ImageError
from cnnserve.v1 import classifier_pb2 as pb

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageLike: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | PILImage"
"""A file path, encoded image bytes, a PIL image, or a numpy array: uint8 pixels [H, W] or [H, W, C] (C = 1 or 3),
or float32 model input [C, H, W]."""

_PIXEL_MODES = {"L", "RGB"}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "P", "RGB", "RGBA"}
"""Modes Pillow writes as PNG; images in other modes (CMYK, YCbCr, LAB, F...) are sent as TIFF."""
_EXIF_ORIENTATION = 0x0112


def encode_image(image: ImageLike) -> pb.Image:
    """The request message for one image. Raises ImageError for something that cannot be sent as an image
    (a file that cannot be read, an array of the wrong type or rank, an unknown object)."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        if not len(image):
            raise ImageError("empty image bytes")
        return pb.Image(encoded=bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return pb.Image(encoded=path.read_bytes())
        except OSError as exc:
            raise ImageError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
    if isinstance(image, np.ndarray):
        return pb.Image(tensor=_tensor(image))
    if _is_pil_image(image):
        return _from_pil(image)
    raise ImageError(
        f"cannot send a {type(image).__name__} as an image: give a file path, encoded image bytes, a PIL image or "
        "a numpy array"
    )


def as_image_iterable(images: ImageLike | Iterable[ImageLike]) -> Iterable[ImageLike]:
    """What `classify` iterates: a lone path, bytes or PIL image counts as one image; anything else must be an
    iterable of images. A lone array is a batch only when it is 4-D: a 3-D uint8 array could be one colour image
    or several grey ones, so it is refused rather than guessed at."""
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | pb.Image) or _is_pil_image(images):
        return [cast("ImageLike", images)]
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise TypeError(
            f"a lone {images.ndim}-D array is ambiguous: pass a list of images ([array] for one), or a 4-D batch"
        )
    if not isinstance(images, Iterable):
        raise TypeError(f"images must be an image or an iterable of images, not {type(images).__name__}")
    return images


def _tensor(array: np.ndarray) -> pb.Tensor:
    if array.dtype == np.uint8:
        if array.ndim not in (2, 3):
            raise ImageError(f"uint8 pixels must be [H, W] or [H, W, C], got shape {list(array.shape)}")
        dtype = pb.UINT8
    elif array.dtype == np.float32:
        if array.ndim != 3:
            raise ImageError(f"float32 model input must be [C, H, W], got shape {list(array.shape)}")
        dtype = pb.FLOAT32
    else:
        raise ImageError(
            f"arrays must be uint8 pixels or float32 model input, got {array.dtype}; convert with "
            "array.astype(np.uint8) or array.astype(np.float32)"
        )
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return pb.Tensor(dtype=dtype, shape=list(array.shape), data=data)


def _is_pil_image(image: Any) -> bool:
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(image, pil.Image)


def _from_pil(image: PILImage) -> pb.Image:
    try:
        image = _upright(image)
        if image.mode in _PIXEL_MODES:
            return pb.Image(tensor=_tensor(np.asarray(image, dtype=np.uint8)))
        buffer = io.BytesIO()
        image_format = "PNG" if image.mode in _PNG_MODES else "TIFF"
        image.save(buffer, format=image_format)
    except (OSError, SyntaxError, ValueError) as exc:  # a lazily loaded image's file can be broken or gone
        raise ImageError(f"cannot send a mode {image.mode} PIL image: {exc}") from exc
    return pb.Image(encoded=buffer.getvalue())


def _upright(image: PILImage) -> PILImage:
    """`image` turned as its EXIF orientation says, as the server turns an encoded file; itself when upright."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in range(2, 9):
        return image
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)
