"""Request payloads for load tests: photo-like images of a model's input size, as PNG, JPEG or raw tensors.

Payloads are built once, from what the server says about the model (GetModel), and reused for every call, so
the load generator spends its CPU on calls and not on encoding. The images are synthetic but shaped like photos
(smooth gradients, a few shapes, sensor-like noise), so PNG and JPEG compress them about as much as real ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cnnserve.metadata import ColorMode, Preprocessing
from cnnserve.preprocessing import to_model_input
from cnnserve.v1 import classifier_pb2 as pb


class PayloadKind(StrEnum):
    """How an image travels in a Classify request."""

    PNG = "png"
    JPEG = "jpeg"
    UINT8 = "uint8"
    """Pixels, [H, W] or [H, W, 3]: the server scales them."""
    FLOAT32 = "float32"
    """The model's preprocessed input, [C, H, W]: the server only copies it into the batch."""


@dataclass(frozen=True)
class ModelInput:
    """A model's input as GetModel reports it: size, colour and how pixels are scaled."""

    channels: int
    height: int
    width: int
    color: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    invert: bool

    @classmethod
    def from_model_info(cls, info: pb.ModelInfo) -> ModelInput:
        if not info.input.height:
            raise ValueError(f"model {info.name!r} reports no input size; is it loaded?")
        pre = info.preprocessing
        return cls(
            channels=info.input.channels,
            height=info.input.height,
            width=info.input.width,
            color=info.input.color,
            scale=pre.scale or 1.0 / 255.0,
            mean=tuple(pre.mean) or (0.0,),
            std=tuple(pre.std) or (1.0,),
            invert=pre.invert,
        )

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            color=ColorMode(self.color),
            height=self.height,
            width=self.width,
            scale=self.scale,
            mean=self.mean,
            std=self.std,
            invert=self.invert,
        )

    def to_model_input(self, pixels: np.ndarray) -> np.ndarray:
        """What the server makes of `pixels` ([H, W] or [H, W, C] of the model's size): float32 [C, H, W], by
        `cnnserve.preprocessing.to_model_input`."""
        return to_model_input(pixels[np.newaxis], self.preprocessing)[0]


def synthetic_photo(model_input: ModelInput, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 image of the model's size: [H, W] for grayscale models, [H, W, 3] for RGB ones."""
    rng = np.random.default_rng(seed)
    height, width = model_input.height, model_input.width
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.uniform(0, 255, size=(2, 3))
    blend = ((x / max(width - 1, 1) + y / max(height - 1, 1)) / 2)[..., np.newaxis]
    background = (start * (1 - blend) + end * blend).astype(np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, size=2) * width)
        y0, y1 = sorted(rng.uniform(-0.2, 1.2, size=2) * height)
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 100))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 4.0, size=(height, width, 3))
    pixels = np.clip(noisy, 0, 255).astype(np.uint8)
    if model_input.channels == 1:
        return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    return pixels


def encode(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if image_format == "JPEG" else {}
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def image_message(pixels: np.ndarray, kind: PayloadKind, model_input: ModelInput) -> pb.Image:
    """`pixels` as one `Image` of a Classify request, in the form `kind` names."""
    if kind is PayloadKind.PNG:
        return pb.Image(encoded=encode(pixels, "PNG"))
    if kind is PayloadKind.JPEG:
        return pb.Image(encoded=encode(pixels, "JPEG"))
    if kind is PayloadKind.UINT8:
        data = np.ascontiguousarray(pixels, dtype=np.uint8)
        return pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=data.shape, data=data.tobytes()))
    tensor = model_input.to_model_input(pixels)
    return pb.Image(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=tensor.shape, data=tensor.astype("<f4").tobytes()))


def classify_request(
    model: str, model_input: ModelInput, kind: PayloadKind, images: int = 1, seed: int = 0
) -> pb.ClassifyRequest:
    """A Classify request for `model` carrying `images` different photo-like images."""
    return pb.ClassifyRequest(
        model=model,
        images=[image_message(synthetic_photo(model_input, seed + i), kind, model_input) for i in range(images)],
    )
