"""An optional dynamic-int8 variant of an exported model, for CPUs, measured against the fp32 original.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, so it needs no calibration
data; it pays off in the large fully connected layers (``mnist_wide``, ``catsdogs``). The variant is stored as
its own repository entry, ``<name>_int8``, so it can be served and compared side by side and the model file
stays the only file of each version folder.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from cnnserve.metadata import ModelMetadata

from .onnx_export import INPUT_NAME, OUTPUT_NAME, attach_metadata, onnx_session

INT8_SUFFIX = "_int8"
QUANTIZED_OPS = ["MatMul", "Gemm"]
"""Only the dense layers: ONNX Runtime's dynamic ConvInteger kernels measured 6-8x slower than fp32 Conv here,
while the dense layers hold most of the weights (97% of ``mnist_wide``'s)."""


@dataclass(frozen=True)
class QuantizedComparison:
    fp32_accuracy: float
    int8_accuracy: float
    fp32_ms_per_batch: float
    int8_ms_per_batch: float
    batch_size: int
    fp32_bytes: int
    int8_bytes: int
    agreement: float
    """Fraction of test images given the same class by both."""


def quantize_int8(model_bytes: bytes, metadata: ModelMetadata) -> bytes:
    """Dynamic int8 dense-layer weights (QInt8, per tensor), carrying ``metadata`` renamed to ``<name>_int8``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        # The exporter's intermediate shape annotations trip the quantizer's own shape inference; it recomputes
        # them anyway.
        plain = onnx.load_from_string(model_bytes)
        plain.graph.ClearField("value_info")
        onnx.save(plain, str(source))
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        proto = onnx.load(str(target))
    extra = {**metadata.extra, "quantization": f"dynamic int8 of {metadata.name}"}
    attach_metadata(proto, replace(metadata, name=metadata.name + INT8_SUFFIX, extra=extra))
    return proto.SerializeToString()


def _outputs_and_time(model_bytes: bytes, inputs: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    session = onnx_session(model_bytes)
    outputs, seconds, batches = [], 0.0, 0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        began = time.perf_counter()
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        if len(batch) == batch_size:
            seconds += time.perf_counter() - began
            batches += 1
        outputs.append(out)
    return np.concatenate(outputs), 1000 * seconds / max(batches, 1)


def compare_int8(
    fp32_bytes: bytes, int8_bytes: bytes, inputs: np.ndarray, labels: np.ndarray, predict, batch_size: int = 64
) -> QuantizedComparison:
    """Accuracy of both on the same test inputs and their mean latency per full batch (CPU provider).

    ``predict`` turns a model's outputs into class indices. A test set smaller than ``batch_size`` is timed
    as one batch of its own size.
    """
    batch_size = min(batch_size, len(inputs))
    fp32_out, fp32_ms = _outputs_and_time(fp32_bytes, inputs, batch_size)
    int8_out, int8_ms = _outputs_and_time(int8_bytes, inputs, batch_size)
    fp32_pred, int8_pred = predict(fp32_out), predict(int8_out)
    return QuantizedComparison(
        fp32_accuracy=float(np.mean(fp32_pred == labels)),
        int8_accuracy=float(np.mean(int8_pred == labels)),
        fp32_ms_per_batch=round(fp32_ms, 3),
        int8_ms_per_batch=round(int8_ms, 3),
        batch_size=batch_size,
        fp32_bytes=len(fp32_bytes),
        int8_bytes=len(int8_bytes),
        agreement=float(np.mean(fp32_pred == int8_pred)),
    )
