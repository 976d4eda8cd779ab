"""The training-side twin of the server's preprocessing: uint8 images to the model's float32 NCHW input.

Training must feed the network exactly what the server will, so this applies the `Preprocessing` recorded in
the model's metadata, in the same order: invert, scale, subtract the mean, divide by the standard deviation.
"""

from __future__ import annotations

import numpy as np

from cnnserve.metadata import Preprocessing


def to_model_input(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 at the model's size -> (N, C, H, W) float32."""
    expected = (preprocessing.height, preprocessing.width)
    if images.shape[1:3] != expected:
        raise ValueError(f"images are {images.shape[1:3]}, the model expects {expected}")
    pixels = images.astype(np.float32)
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    if pixels.shape[1] != preprocessing.channels:
        raise ValueError(f"images have {pixels.shape[1]} channels, the model expects {preprocessing.channels}")
    if preprocessing.invert:
        pixels = 255.0 - pixels
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels * np.float32(preprocessing.scale) - mean) / std, dtype=np.float32)
