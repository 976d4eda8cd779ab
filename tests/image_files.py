"""Image files as people send them, made in the tests: any format Pillow writes, stored turned with EXIF."""

from __future__ import annotations

import io

from PIL import Image

STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
"""EXIF orientation -> how to store an upright picture so that a viewer (ImageOps.exif_transpose), told the
orientation, turns it back."""


def encoded(picture: Image.Image, image_format: str, **options: object) -> bytes:
    """`picture` as a file of `image_format`, with Pillow's save `options`."""
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def turned(picture: Image.Image, orientation: int, image_format: str, **options: object) -> bytes:
    """`picture` stored turned, with the EXIF orientation that tells a viewer how to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(picture.transpose(STORED_AS[orientation]), image_format, exif=exif, **options)
