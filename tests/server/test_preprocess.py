"""The image preprocessor on its own: headers are checked first, pixels decoded later."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnserve.metadata import ColorMode, Preprocessing
from cnnserve.preprocessing import to_model_input
from cnnserve.server.errors import InvalidInputError
from cnnserve.server.preprocess import FloatTensor, ImagePreprocessor, PixelTensor
from tests.conftest import jpeg_bytes, png_bytes

MNIST_LIKE = Preprocessing(color=ColorMode.GRAYSCALE, height=28, width=28, mean=(0.5,), std=(0.5,))


def test_prepare_reads_headers_only_and_counts_the_pixels_to_decode() -> None:
    big = png_bytes(np.zeros((600, 800), np.uint8))
    truncated = big[: len(big) // 2]
    model_sized = PixelTensor((28, 28), bytes(784))
    to_resize = PixelTensor((30, 30), bytes(900))
    prepared = ImagePreprocessor(MNIST_LIKE).prepare([truncated, model_sized, to_resize])
    assert prepared.pixels == 600 * 800 + 30 * 30, "the truncated file's header was enough; model-sized pixels skip"
    with pytest.raises(InvalidInputError, match="image 0 could not be decoded"):
        prepared.finish()


def test_every_kind_of_image_becomes_the_same_model_input() -> None:
    pixels = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
    ready = to_model_input(pixels[np.newaxis], MNIST_LIKE)[0]
    preprocessor = ImagePreprocessor(MNIST_LIKE)
    batch = preprocessor.batch(
        [png_bytes(pixels), PixelTensor((28, 28), pixels.tobytes()), FloatTensor((1, 28, 28), ready.tobytes())]
    )
    assert batch.shape == (3, 1, 28, 28) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], ready, atol=1e-6)
    np.testing.assert_allclose(batch[1], ready, atol=1e-6)
    np.testing.assert_allclose(batch[2], ready, atol=1e-6)
    jpeg = preprocessor.batch([jpeg_bytes(np.stack([pixels] * 3, axis=-1), quality=100)])
    assert np.abs(jpeg[0] - ready).mean() < 0.05, "JPEG is lossy but close"


def test_a_header_over_the_pixel_limit_is_refused_before_decoding() -> None:
    huge_but_small_file = png_bytes(np.zeros((3000, 3000), np.uint8))
    with pytest.raises(InvalidInputError, match="3000x3000 pixels, over the limit of 1000000"):
        ImagePreprocessor(MNIST_LIKE, max_image_pixels=1_000_000).prepare([huge_but_small_file])


def test_model_sized_rgb_pixels_skip_pillow_but_match_it() -> None:
    """Pixels of the model's size are scaled straight into the batch; the answer is the one Pillow's path gives."""
    rgb = Preprocessing(color=ColorMode.RGB, height=6, width=5, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2))
    preprocessor = ImagePreprocessor(rgb)
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    expected = to_model_input(pixels[np.newaxis], rgb)[0]
    twice_as_big = np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)
    ready = FloatTensor((3, 6, 5), expected.tobytes())
    batch = preprocessor.batch(
        [
            PixelTensor((6, 5, 3), pixels.tobytes()),
            png_bytes(pixels),
            ready,
            PixelTensor((12, 10, 3), twice_as_big.tobytes()),
        ]
    )
    assert batch.shape == (4, 3, 6, 5) and batch.dtype == np.float32
    for row in range(3):
        np.testing.assert_allclose(batch[row], expected, atol=1e-5)
    resized = np.asarray(Image.fromarray(twice_as_big).resize((5, 6), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(batch[3], to_model_input(resized[np.newaxis], rgb)[0], atol=1e-5)
    only_pixels = preprocessor.batch([PixelTensor((6, 5, 3), pixels.tobytes())] * 2)
    np.testing.assert_allclose(only_pixels, np.stack([expected, expected]), atol=1e-5)
