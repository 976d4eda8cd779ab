"""Turning what applications hold (paths, bytes, PIL images, numpy arrays) into request images."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from cnnserve.client._exceptions import ImageError

from cnnserve.v1 import classifier_pb2 as pb

ImageLike: TypeAlias = "str | os.PathLike[str] | bytes | np.ndarray | Any"
"""A file path, encoded PNG/JPEG bytes, a PIL image, or a numpy array (uint8 pixels HxW[xC], or float32 CxHxW)."""


def to_image_message(image: ImageLike) -> pb.Image:
    """Encode one image for a request. Raises ImageError for something that is not an image."""
    if isinstance(image, bytes | bytearray | memoryview):
        return pb.Image(encoded=bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return pb.Image(encoded=path.read_bytes())
        except OSError as exc:
            raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    if isinstance(image, np.ndarray):
        return pb.Image(tensor=_tensor(image))
    if hasattr(image, "save") and hasattr(image, "mode"):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return pb.Image(encoded=buffer.getvalue())
    raise ImageError(f"cannot send {type(image).__name__} as an image; give a path, bytes, a PIL image or an array")


def _tensor(array: np.ndarray) -> pb.Tensor:
    if array.dtype == np.uint8:
        dtype = pb.UINT8
    elif array.dtype == np.float32:
        dtype = pb.FLOAT32
    else:
        raise ImageError(f"arrays must be uint8 pixels or float32 model inputs, got {array.dtype}")
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return pb.Tensor(dtype=dtype, shape=list(array.shape), data=data)
