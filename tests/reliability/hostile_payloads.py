"""Broken and hostile payloads, built byte by byte: truncated files, decompression bombs, lying headers.

Used by the hostile-input tests and, as seeds, by the property-based test.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image

from cnnserve.export import render_x
from tests.conftest import jpeg_bytes, png_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` 8-bit grayscale pixels but whose data holds almost none."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(64)))
        + _png_chunk(b"IEND", b"")
    )


def png_with_broken_second_chunk(data: bytes) -> bytes:
    """A valid PNG whose image data is split in two chunks, the second with a type that is not letters.

    Pillow opens it, then raises SyntaxError (not OSError) while decoding: the kind of surprise hostile bytes bring.
    """
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    compressed = data[start + 8 : start + 8 + length]
    rest = data[start + 12 + length :]
    return data[:start] + _png_chunk(b"IDAT", compressed[:5]) + _png_chunk(b"u\xeftr", compressed[5:]) + rest


def blank_png(width: int, height: int) -> bytes:
    """A complete, valid black grayscale PNG; a few hundred kB even when it decodes to hundreds of MB.

    Compressed row by row, so building a bomb does not cost the test the memory the bomb would cost the server.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim `width` x `height` pixels."""
    data = bytearray(jpeg_bytes(render_x()))
    start = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, start + 5, height, width)
    return bytes(data)


def other_format(fmt: str) -> bytes:
    """A valid image in a format the server does not accept (GIF, BMP, TIFF...)."""
    buffer = io.BytesIO()
    Image.fromarray(render_x()).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def float_tensor_bytes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


VALID_SEEDS = (
    png_bytes(render_x()),
    jpeg_bytes(render_x()),
    png_bytes(np.stack([render_x()] * 3, axis=-1)),
    jpeg_bytes(np.kron(render_x(), np.ones((4, 4), np.uint8))),
)
"""Valid encoded images that the property-based test mutates."""
