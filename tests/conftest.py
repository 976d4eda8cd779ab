"""Fixtures shared by the whole suite: a real model repository exported by our own code, and a real server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import ServerProcess, running_server


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`xo` and `mnist_net`, trained briefly and exported by cnnserve.export into a fresh repository."""
    from cnnserve.export import build_model

    root = tmp_path_factory.mktemp("models")
    build_model("xo", root)
    build_model("mnist_net", root)
    return root


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the read-only tests: batching on, 10 ms queue delay so concurrent calls meet."""
    with running_server(
        model_repository, "--max-queue-delay-ms", "10", workdir=tmp_path_factory.mktemp("server")
    ) as process:
        yield process


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as 28x28 MNIST-style images, and their labels."""
    from cnnserve.export import load_digit_images

    return load_digit_images()
