"""Broken and hostile payloads, built byte by byte: truncated files, decompression bombs, lying headers, in every
format the server accepts (PNG, JPEG, WebP, BMP, GIF, TIFF).

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


def _small(fmt: str, **options: object) -> bytearray:
    buffer = io.BytesIO()
    Image.fromarray(render_x()).save(buffer, format=fmt, **options)
    return bytearray(buffer.getvalue())


def gif_claiming(width: int, height: int) -> bytes:
    """A real small GIF whose logical screen is rewritten to `width` x `height` (Pillow sizes the image by it)."""
    data = _small("GIF")
    struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    """A real small BMP whose info header is rewritten to claim `width` x `height` pixels."""
    data = _small("BMP")
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A real small lossless WebP whose VP8L header claims `width` x `height` pixels (each at most 16384).

    Pillow's decoder allocates its canvases for the claimed size as soon as it is created, before any decoding.
    """
    data = _small("WEBP", lossless=True)
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    (bits,) = struct.unpack_from("<I", data, 21)
    struct.pack_into("<I", data, 21, (bits & ~0xFFFFFFF) | (width - 1) | (height - 1) << 14)
    return bytes(data)


TIFF_UNCOMPRESSED, TIFF_DEFLATE = 1, 8


def tiff_pages(*pages: tuple[int, int, bytes, int], tile: int = 0) -> bytes:
    """A little-endian TIFF of 8-bit grey pages, each `(width, height, data, compression)` with its data in one
    strip, or with `tile` in one tile of `tile` x `tile` pixels: written by hand, so that headers can claim
    anything."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for number, (width, height, data, compression) in enumerate(pages):
        data += bytes(len(data) % 2)  # the next page's header starts on a word boundary
        if tile:  # tile width, tile length, tile offsets, tile byte counts (None: where the data starts)
            layout = [(322, tile), (323, tile), (324, None), (325, len(data))]
        else:  # strip offsets, rows per strip, strip byte counts
            layout = [(273, None), (278, height), (279, len(data))]
        # width, height, bits per sample, compression, photometric (black is zero), samples per pixel
        tags = sorted([(256, width), (257, height), (258, 8), (259, compression), (262, 1), (277, 1), *layout])
        data_start = len(out) + 2 + 12 * len(tags) + 4
        out += struct.pack("<H", len(tags))
        for tag, value in tags:
            out += struct.pack("<HHII", tag, 4, 1, data_start if value is None else value)  # all as LONG
        out += struct.pack("<I", data_start + len(data) if number + 1 < len(pages) else 0) + data
    return bytes(out)


def deflated_zeros(width: int, height: int) -> bytes:
    """`width` x `height` zero bytes, deflated row by row (without holding them all in memory)."""
    compressor = zlib.compressobj(9)
    row = bytes(width)
    return b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()


def blank_tiff(width: int, height: int) -> bytes:
    """A complete, valid black TIFF, deflate-compressed: tens of kB that decode to `width` x `height` bytes."""
    return tiff_pages((width, height, deflated_zeros(width, height), TIFF_DEFLATE))


def tiff_claiming(width: int, height: int) -> bytes:
    """An uncompressed TIFF whose header claims `width` x `height` pixels but whose data holds 64."""
    return tiff_pages((width, height, bytes(64), TIFF_UNCOMPRESSED))


def tiff_with_huge_tiles(tile: int) -> bytes:
    """A valid 16x16 TIFF stored in one deflated tile of `tile` x `tile` pixels: libtiff decodes a tile whole."""
    return tiff_pages((16, 16, deflated_zeros(tile, tile), TIFF_DEFLATE), tile=tile)


def other_format(fmt: str) -> bytes:
    """A valid image in a format the server does not accept (PPM, TGA, JPEG 2000...)."""
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
