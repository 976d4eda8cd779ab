"""Serving a float32 model in float16: the conversion, and the check that it still gives the same answers.

The conversion is ONNX Runtime's own (`onnxruntime.transformers.float16`): every float32 initializer and
intermediate becomes float16, while the graph's inputs and outputs stay float32 behind Cast nodes, so callers,
preprocessing and the Open Inference Protocol's datatypes do not change. Half precision roughly doubles a tensor
core GPU's convolution throughput, but a model can overflow (values above 65504) or lose a close call between
two labels, so a version is only served in fp16 after its top-1 labels were compared with float32's on generated
images, and its load is refused when too many differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cnnserve.metadata import OutputKind, Preprocessing
from cnnserve.server.errors import ModelLoadError
from cnnserve.server.postprocess import to_probabilities
from cnnserve.server.preprocess import ImagePreprocessor, PixelTensor

CHECK_IMAGES = 64
"""Generated images the fp16 graph's top-1 labels are compared on."""
_BLOB_CELLS = (2, 3, 4, 6)
"""Grid sizes of the random low-resolution pictures that the check images are upscaled from."""


def fp16_model(model_file: Path) -> bytes:
    """The float32 ONNX model in `model_file` converted to float16 compute, its inputs and outputs still float32,
    as one serialized model (weights that the original keeps in files beside it, as `torch.onnx.export` writes
    them, are read from there and embedded).

    Raises ModelLoadError when the graph cannot be converted (say, an operator with no float16 form).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(onnx.load_model(str(model_file)), keep_io_types=True)
    except Exception as exc:
        raise ModelLoadError(f"the graph could not be converted to fp16: {exc.__class__.__name__}: {exc}") from exc
    return converted.SerializeToString()


def check_images(preprocessing: Preprocessing, count: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """`count` generated images as model input: smooth random colour fields (upscaled from a few random cells),
    which a classifier answers with varied and mostly clear labels, unlike white noise, whose labels are near ties
    that any rounding flips."""
    rng = np.random.default_rng(seed)
    height, width, channels = preprocessing.height, preprocessing.width, preprocessing.channels
    pictures: list[PixelTensor] = []
    for index in range(count):
        cells = _BLOB_CELLS[index % len(_BLOB_CELLS)]
        coarse = rng.integers(0, 256, (cells, cells, channels), dtype=np.uint8)
        mode = "L" if channels == 1 else "RGB"
        picture = Image.fromarray(coarse[..., 0] if channels == 1 else coarse, mode)
        pixels = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
        pictures.append(PixelTensor(pixels.shape, pixels.tobytes()))
    return ImagePreprocessor(preprocessing).batch(pictures)


@dataclass(frozen=True)
class Fp16Agreement:
    """How the fp16 graph's top-1 labels compared with float32's on the check images."""

    images: int
    differing: int

    @property
    def share_differing(self) -> float:
        return self.differing / self.images if self.images else 0.0

    @property
    def agreement(self) -> float:
        return 1.0 - self.share_differing


def compare_top1(reference: np.ndarray, candidate: np.ndarray, kind: OutputKind) -> Fp16Agreement:
    """Top-1 agreement of two raw classifier outputs (`kind` says what they hold) for the same images."""
    if reference.shape != candidate.shape:
        raise ModelLoadError(
            f"the fp16 graph's output has shape {list(candidate.shape)}, float32's {list(reference.shape)}"
        )
    expected = to_probabilities(reference, kind).argmax(axis=1)
    found = to_probabilities(candidate, kind).argmax(axis=1)
    return Fp16Agreement(len(reference), int(np.count_nonzero(expected != found)))


def refuse_if_disagreeing(agreement: Fp16Agreement, max_share: float) -> None:
    """ModelLoadError when more than `max_share` of the check images got another top-1 label in fp16."""
    if agreement.share_differing > max_share:
        raise ModelLoadError(
            f"in fp16 the model's top-1 label differs from float32's on {agreement.differing} of "
            f"{agreement.images} generated images ({agreement.share_differing:.1%}, more than "
            f"fp16_max_disagreement {max_share:.1%}); serve it with precision fp32, or raise "
            "fp16_max_disagreement if that is acceptable"
        )
