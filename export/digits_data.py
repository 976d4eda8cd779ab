"""scikit-learn's 1,797 handwritten digits, redrawn as 28x28 MNIST-style images.

MNIST digits are white on black and size-normalised into the central 20x20 box of a 28x28 image. The 8x8
digits (ink 0..16, high is ink) are upsampled to 20x20 with Pillow's bilinear filter and pasted in that box,
so a model trained here sees the same kind of image a real MNIST model would, and the same preprocessing
applies to both.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

DIGIT_LABELS = tuple(str(d) for d in range(10))
MNIST_SIZE = 28
_BOX = 20


@functools.cache
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    margin = (MNIST_SIZE - _BOX) // 2
    images = np.zeros((len(digits.images), MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    for i, small in enumerate(digits.images):
        ink = Image.fromarray((small * (255.0 / 16.0)).astype(np.float32), mode="F")
        box = np.asarray(ink.resize((_BOX, _BOX), Image.Resampling.BILINEAR))
        images[i, margin : margin + _BOX, margin : margin + _BOX] = np.clip(np.rint(box), 0, 255)
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: images (1797, 28, 28) uint8, white digit on black, and labels (1797,) int64 0..9.

    The arrays are cached and read-only; copy them before changing them.
    """
    return _digit_images()
