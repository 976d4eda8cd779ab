"""Images as people send them, against the suite's real server: every accepted format, EXIF-rotated photos,
transparency, multi-frame files, 16-bit and CMYK files, and a decompression bomb in each new format.

Every image is made here with Pillow from scikit-learn's digits (and one of its sample photos). Lossless formats
must give the PNG's probabilities to float rounding; lossy ones (JPEG, lossy WebP) the PNG's label and nearly its
probabilities.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cnnserve.cli import main
from cnnserve.client import Client
from cnnserve.export import get_spec
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import png_bytes
from tests.image_files import STORED_AS, encoded, turned
from tests.reliability.hostile_payloads import (
    blank_tiff,
    bmp_claiming,
    gif_claiming,
    tiff_with_huge_tiles,
    webp_claiming,
)
from tests.servers import ServerProcess, channel_to

LOSSLESS = 1e-5
LOSSY = 0.15
"""How far a probability may move when the digit is compressed lossily (JPEG quality 90, WebP quality 90)."""

PICKS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
"""Digits 0 to 9 and two more: scikit-learn's digits start 0, 1, 2, ... 9, 0, 1."""

SEVEN = 7
"""A digit that does not look like itself when turned a quarter."""


def sixteen_bit(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint16) * 257)  # mode I;16: 0..65535, 8-bit value v as v * 257


def cmyk(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).convert("RGB").convert("CMYK")


FORMATS = {
    "JPEG": (lambda digit: encoded(Image.fromarray(digit), "JPEG", quality=90), LOSSY),
    "WebP, lossy": (lambda digit: encoded(Image.fromarray(digit), "WEBP", quality=90), LOSSY),
    "WebP, lossless": (lambda digit: encoded(Image.fromarray(digit), "WEBP", lossless=True), LOSSLESS),
    "BMP": (lambda digit: encoded(Image.fromarray(digit), "BMP"), LOSSLESS),
    "GIF": (lambda digit: encoded(Image.fromarray(digit), "GIF"), LOSSLESS),
    "TIFF": (lambda digit: encoded(Image.fromarray(digit), "TIFF"), LOSSLESS),
    "TIFF, deflate": (lambda digit: encoded(Image.fromarray(digit), "TIFF", compression="tiff_deflate"), LOSSLESS),
    "TIFF, LZW": (lambda digit: encoded(Image.fromarray(digit), "TIFF", compression="tiff_lzw"), LOSSLESS),
    "PNG, RGB": (lambda digit: png_bytes(np.stack([digit] * 3, axis=-1)), LOSSLESS),
    "PNG, 16-bit grey": (lambda digit: encoded(sixteen_bit(digit), "PNG"), LOSSLESS),
    "TIFF, 16-bit grey": (lambda digit: encoded(sixteen_bit(digit), "TIFF"), LOSSLESS),
    "JPEG, CMYK": (lambda digit: encoded(cmyk(digit), "JPEG", quality=90), LOSSY),
    "TIFF, CMYK": (lambda digit: encoded(cmyk(digit), "TIFF"), LOSSLESS),
}


@pytest.fixture(scope="module")
def stub(server: ServerProcess):
    with channel_to(server) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


def classify(stub, *images: bytes, model: str = "mnist_net") -> list[pb.Classification]:
    request = pb.ClassifyRequest(
        model=model, images=[pb.Image(encoded=image) for image in images], return_probabilities=True
    )
    return list(stub.Classify(request, timeout=30).results)


def probabilities(results: list[pb.Classification]) -> np.ndarray:
    return np.array([result.probabilities for result in results])


def labels(results: list[pb.Classification]) -> list[str]:
    return [result.top[0].label for result in results]


@pytest.fixture(scope="module")
def picked(digits) -> list[np.ndarray]:
    images, _ = digits
    return [images[i] for i in PICKS]


@pytest.fixture(scope="module")
def as_png(stub, picked) -> list[pb.Classification]:
    return classify(stub, *(png_bytes(digit) for digit in picked))


@pytest.mark.parametrize("image_format", FORMATS)
def test_every_format_gives_the_label_and_probabilities_of_the_png(stub, picked, as_png, image_format) -> None:
    encode, tolerance = FORMATS[image_format]
    results = classify(stub, *(encode(digit) for digit in picked))
    difference = np.abs(probabilities(results) - probabilities(as_png)).max()
    assert difference <= tolerance, f"{image_format}: probabilities differ from the PNG's by {difference:.3g}"
    confident = [row for row, result in enumerate(as_png) if result.top[0].probability >= 0.5 + tolerance]
    assert len(confident) >= len(PICKS) // 2, "the briefly trained model is sure of too few digits to compare"
    assert [labels(results)[row] for row in confident] == [labels(as_png)[row] for row in confident]


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_an_exif_rotated_jpeg_classifies_like_the_upright_digit(stub, digits, orientation) -> None:
    images, targets = digits
    seven = Image.fromarray(images[int(np.flatnonzero(targets == SEVEN)[0])])
    upright, rotated = classify(
        stub, encoded(seven, "JPEG", quality=95), turned(seven, orientation, "JPEG", quality=95)
    )
    stored_turned = encoded(seven.transpose(STORED_AS[orientation]), "JPEG", quality=95)
    (untagged,) = classify(stub, stored_turned)
    np.testing.assert_allclose(rotated.probabilities, upright.probabilities, atol=0.05)
    assert rotated.top[0].label == upright.top[0].label
    assert np.abs(np.subtract(untagged.probabilities, upright.probabilities)).max() > 0.05, (
        "the same file without its EXIF orientation should look different to the model"
    )


@pytest.mark.parametrize(("image_format", "options"), [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_exif_orientation_is_applied_in_lossless_formats_to_the_pixel(stub, picked, image_format, options) -> None:
    """Each of the seven orientations on another digit, in one request."""
    digits = picked[: len(STORED_AS)]
    pictures = [Image.fromarray(digit) for digit in digits]
    results = classify(stub, *(turned(p, o, image_format, **options) for p, o in zip(pictures, STORED_AS, strict=True)))
    upright = classify(stub, *(png_bytes(digit) for digit in digits))
    np.testing.assert_allclose(probabilities(results), probabilities(upright), atol=LOSSLESS)


def configured_background() -> tuple[int, int, int]:
    """The colour mnist_net's preprocessing composites transparent pixels onto (white unless it names one)."""
    return get_spec("mnist_net").preprocessing.background


def on_background(ink: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> Image.Image:
    """`ink` (RGB) over `background` where `alpha` says, composited as Pillow pastes through a mask."""
    canvas = Image.new("RGB", (alpha.shape[1], alpha.shape[0]), background)
    canvas.paste(Image.fromarray(ink), mask=Image.fromarray(alpha))
    return canvas


def test_an_rgba_digit_on_a_transparent_background_classifies_like_the_digit_on_the_background(stub, picked) -> None:
    """The digit is the alpha channel: opaque ink where the stroke is, transparent elsewhere. The ink contrasts
    with the configured background, so the digit shows whatever that background is."""
    background = configured_background()
    dark_background = sum(background) < 3 * 128
    ink_colour, other_background = ((255, 255, 255), (255, 255, 255)) if dark_background else ((0, 0, 0), (0, 0, 0))
    rgba, on_configured, on_other = [], [], []
    for digit in picked:
        ink = np.broadcast_to(np.array(ink_colour, np.uint8), (*digit.shape, 3)).copy()
        rgba.append(encoded(Image.fromarray(np.dstack([ink, digit])), "PNG"))
        on_configured.append(encoded(on_background(ink, digit, background), "PNG"))
        on_other.append(encoded(on_background(ink, digit, other_background), "PNG"))
    results, expected, elsewhere = (classify(stub, *images) for images in (rgba, on_configured, on_other))
    np.testing.assert_allclose(probabilities(results), probabilities(expected), atol=LOSSLESS)
    assert np.abs(probabilities(results) - probabilities(elsewhere)).max() > 0.05, "the background made no odds"


def test_la_and_palette_transparency_are_composited_like_rgba(stub, picked) -> None:
    background = configured_background()
    digit = picked[3]
    alpha = np.where(digit > 127, 255, 0).astype(np.uint8)
    grey = np.full_like(digit, 255 - int(np.mean(background)))  # ink that contrasts with the background
    la = encoded(Image.fromarray(np.dstack([grey, alpha])), "PNG")
    palette = Image.frombytes("P", (digit.shape[1], digit.shape[0]), (alpha // 255).tobytes())  # 1: ink, 0: clear
    palette.putpalette([0, 0, 0, int(grey[0, 0]), int(grey[0, 0]), int(grey[0, 0])])
    gif = encoded(palette, "GIF", transparency=0)
    png = encoded(palette, "PNG", transparency=0)
    expected = on_background(np.dstack([grey] * 3), alpha, background)
    results = classify(stub, la, gif, png, encoded(expected, "PNG"))
    for result, name in zip(results[:3], ("LA PNG", "GIF", "palette PNG"), strict=True):
        np.testing.assert_allclose(result.probabilities, results[3].probabilities, atol=LOSSLESS, err_msg=name)


@pytest.mark.parametrize("image_format", ["GIF", "TIFF", "WEBP"])
def test_the_first_frame_of_a_multi_frame_file_is_used(stub, picked, image_format) -> None:
    options = {"lossless": True} if image_format == "WEBP" else {}
    frames = [Image.fromarray(digit) for digit in picked[1:4]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], **options)
    first, second = classify(stub, png_bytes(picked[1]), png_bytes(picked[2]))
    assert not np.allclose(first.probabilities, second.probabilities, atol=0.01), "the frames must differ"
    (result,) = classify(stub, buffer.getvalue())
    np.testing.assert_allclose(result.probabilities, first.probabilities, atol=LOSSLESS)


def test_a_photo_in_every_lossless_format_and_orientation_gives_the_pngs_answer(stub) -> None:
    """A real photo (scikit-learn's sample, 640x427) exercises decoders and the resize on a full-size picture."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg"))
    images = [
        encoded(photo, "PNG"),
        encoded(photo, "WEBP", lossless=True),
        encoded(photo, "BMP"),
        encoded(photo, "TIFF", compression="tiff_deflate"),
        encoded(photo.convert("CMYK"), "TIFF"),
        turned(photo, 6, "PNG"),
        turned(photo, 3, "TIFF"),
        encoded(sixteen_bit(np.asarray(photo.convert("L"))), "PNG"),
        encoded(photo.convert("RGBA"), "PNG"),
    ]
    results = probabilities(classify(stub, *images))
    np.testing.assert_allclose(results, np.broadcast_to(results[0], results.shape), atol=LOSSLESS)


BOMBS = {
    "TIFF, deflate-compressed": blank_tiff(9000, 9000),
    "TIFF, one 8192x8192 tile": tiff_with_huge_tiles(8192),
    "GIF claiming 9000x9000": gif_claiming(9000, 9000),
    "BMP claiming 9000x9000": bmp_claiming(9000, 9000),
    "WebP claiming 9000x9000": webp_claiming(9000, 9000),
    "GIF claiming 65535x65535": gif_claiming(65535, 65535),
    "WebP claiming 16384x16384": webp_claiming(16384, 16384),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_bomb_in_each_new_format_is_refused_and_the_server_keeps_answering(stub, picked, as_png, bomb) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        classify(stub, png_bytes(picked[0]), BOMBS[bomb])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1 " in refused.value.details() and "over the limit of" in refused.value.details()
    (answer,) = classify(stub, png_bytes(picked[0]))
    np.testing.assert_allclose(answer.probabilities, as_png[0].probabilities, atol=LOSSLESS)


SUFFIXES = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".TIFF": "TIFF",
}


def test_cnnserve_classify_finds_and_classifies_every_format_in_a_folder(
    server: ServerProcess, picked, as_png, tmp_path: Path, capsys
) -> None:
    for suffix, image_format in SUFFIXES.items():
        (tmp_path / f"digit{suffix}").write_bytes(encoded(Image.fromarray(picked[1]), image_format))
    assert main(["classify", "--server", server.target, "--model", "mnist_net", "--json", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(line["path"]).suffix for line in lines) == sorted(SUFFIXES)
    assert {line["label"] for line in lines} == {as_png[1].top[0].label}


def test_the_client_turns_pil_images_upright_and_sends_other_modes_losslessly(
    server: ServerProcess, picked, tmp_path: Path
) -> None:
    """A PIL image opened from an EXIF-rotated file is turned as the server turns the file; CMYK, 16-bit and
    palette images, which are not raw pixels, travel as TIFF or PNG without loss."""
    digit = Image.fromarray(picked[7])
    rotated = tmp_path / "rotated.png"
    rotated.write_bytes(turned(digit, 6, "PNG"))
    images = [
        digit,
        rotated,
        Image.open(rotated),
        cmyk(picked[7]),
        sixteen_bit(picked[7]),
        digit.convert("P"),
    ]
    with Client(server.target) as client:
        results = client.classify(images, model="mnist_net", return_probabilities=True)
    expected = np.broadcast_to(results[0].probabilities, (len(images), len(results[0].probabilities)))
    np.testing.assert_allclose([result.probabilities for result in results], expected, atol=LOSSLESS)
