"""Reading MNIST and Fashion-MNIST IDX files that an operator already has on disk.

The IDX format (LeCun et al.) is a big-endian header: two zero bytes, a type code, the number of dimensions,
then one uint32 size per dimension, followed by the data. Only unsigned bytes (type 0x08) appear in MNIST, so
only they are accepted. Files may be gzipped; the ``.gz`` suffix decides.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_UNSIGNED_BYTE = 0x08

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The file stems MNIST and Fashion-MNIST share, per split."""


class IdxFormatError(ValueError):
    """The bytes are not an unsigned-byte IDX array."""


def parse_idx(data: bytes) -> np.ndarray:
    """Decode one IDX array from its bytes; raises IdxFormatError on a bad header or a size mismatch."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxFormatError("not an IDX file: it must start with two zero bytes")
    if data[2] != _UNSIGNED_BYTE:
        raise IdxFormatError(f"only unsigned byte IDX data (0x08) is supported, got type 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError("IDX header is truncated")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 1
    if len(data) - header != expected:
        raise IdxFormatError(f"IDX shape {shape} needs {expected} bytes of data, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    return parse_idx(gzip.decompress(raw) if path.suffix == ".gz" else raw)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzipped if ``path`` ends in .gz); tests use it to make small files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UNSIGNED_BYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_mnist_files(folder: Path) -> bool:
    return all(_find(folder, stem) for pair in MNIST_FILES.values() for stem in pair)


def load_mnist_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the ``train`` or ``test`` split in ``folder``."""
    paths = []
    for stem in MNIST_FILES[split]:
        path = _find(folder, stem)
        if path is None:
            raise FileNotFoundError(f"{folder} has no {stem} (or {stem}.gz)")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IdxFormatError(f"{paths[0].name} {images.shape} and {paths[1].name} {labels.shape} do not pair up")
    return images, labels.astype(np.int64)
