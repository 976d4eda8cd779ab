"""From a trained PyTorch module to a self-describing, checked ONNX model.

Exporter: ``torch.onnx.export(..., dynamo=True)`` at opset 18. Both it and the legacy TorchScript exporter
produce a correct graph for all six networks here, but the legacy one warns that it will be removed and the
torch.export-based one is PyTorch's default since 2.9, so the files we write will keep being reproducible.
Opset 18 is the dynamo exporter's native opset (no down-conversion pass) and every ONNX Runtime release since
1.14 runs it.

The graph has one float32 input ``input`` [batch, C, H, W] and one output ``output`` [batch, K] with the batch
axis named ``batch`` and dynamic; asked for, the convolutions' feature maps follow as further outputs
(`cnnserve.export.activation_outputs`), listed in the metadata's ``activations``. The file is written whole
(weights inline, no external data), and carries `ModelMetadata` under `METADATA_KEY`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch
from torch import nn

from cnnserve.metadata import METADATA_KEY, ActivationOutput, ModelMetadata

from .activation_outputs import add_activation_outputs

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_AXIS = "batch"
PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4
"""float32 kernels differ in summation order between PyTorch and ONNX Runtime; outputs of these networks agree
to about 1e-6, so 1e-4 absolute and relative leaves margin without hiding a wrong graph."""


class ParityError(AssertionError):
    """ONNX Runtime's output differs from PyTorch's beyond the stated tolerance."""


@dataclass(frozen=True)
class ParityReport:
    batch_sizes: tuple[int, ...]
    max_abs_difference: float
    atol: float = PARITY_ATOL
    rtol: float = PARITY_RTOL


def export_to_onnx(model: nn.Module, metadata: ModelMetadata, *, activations: bool = False) -> onnx.ModelProto:
    """Trace ``model`` in eval mode and return the checked ONNX model with ``metadata`` attached.

    With ``activations`` the graph also outputs each convolution's feature maps after its classifier output, and
    the attached metadata lists them (`embedded_metadata` reads it back); without, the file is as it always was.
    """
    pre = metadata.preprocessing
    example = torch.zeros(2, pre.channels, pre.height, pre.width)
    model.eval()
    with _quiet_exporter(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
            verbose=False,
        )
    proto = program.model_proto
    if activations:
        metadata = replace(metadata, activations=add_activation_outputs(proto, BATCH_AXIS))
        logger.info("activation outputs: %s", ", ".join(f"{a.output} {list(a.shape)}" for a in metadata.activations))
    attach_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    _check_signature(proto, pre.channels, pre.height, pre.width, metadata.activations)
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's helpers log every optimisation pass at INFO; keep them to warnings for the export."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def attach_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Set (or replace) the cnnserve entry in the model's metadata_props."""
    for entry in list(proto.metadata_props):
        if entry.key == METADATA_KEY:
            proto.metadata_props.remove(entry)
    proto.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())


def embedded_metadata(proto: onnx.ModelProto) -> ModelMetadata:
    """The metadata attached to ``proto``; raises ValueError if it has none or it is malformed."""
    return ModelMetadata.from_metadata_props({entry.key: entry.value for entry in proto.metadata_props})


def _check_signature(
    proto: onnx.ModelProto, channels: int, height: int, width: int, activations: tuple[ActivationOutput, ...] = ()
) -> None:
    """One image input, the classifier output first, then exactly the ``activations`` outputs (none unless asked
    for), each [batch, C, H, W] as listed; raises ValueError otherwise."""
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1 + len(activations):
        raise ValueError(
            f"expected one input and {1 + len(activations)} outputs, got {len(graph.input)} and {len(graph.output)}"
        )
    (graph_input,), graph_output = graph.input, graph.output[0]
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    if graph_input.name != INPUT_NAME or dims != [BATCH_AXIS, channels, height, width]:
        raise ValueError(f"unexpected input {graph_input.name} {dims}")
    if graph_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ValueError("the input must be float32")
    out_dims = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    if graph_output.name != OUTPUT_NAME or len(out_dims) != 2 or out_dims[0] != BATCH_AXIS:
        raise ValueError(f"unexpected output {graph_output.name} {out_dims}")
    for activation, extra_output in zip(activations, graph.output[1:], strict=True):
        dims = [d.dim_param or d.dim_value for d in extra_output.type.tensor_type.shape.dim]
        if extra_output.name != activation.output or dims != [BATCH_AXIS, *activation.shape]:
            raise ValueError(f"unexpected activation output {extra_output.name} {dims}, expected {activation}")


def onnx_session(model_bytes: bytes):
    """A CPU ONNX Runtime session, the provider every deployment has."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def check_parity(
    model: nn.Module, model_bytes: bytes, inputs: torch.Tensor, batch_sizes=PARITY_BATCH_SIZES
) -> ParityReport:
    """Run the same batches through PyTorch (eval) and ONNX Runtime; raises ParityError if they disagree.

    Compares the classifier output (`OUTPUT_NAME`), the graph's first, whatever outputs follow it. Batches are
    taken from ``inputs`` (real preprocessed images), repeated if there are too few.
    """
    session = onnx_session(model_bytes)
    model.eval()
    worst = 0.0
    for size in batch_sizes:
        batch = inputs[torch.arange(size) % len(inputs)]
        with torch.no_grad():
            expected = model(batch).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
        if actual.shape != expected.shape:
            raise ParityError(f"batch {size}: ONNX output {actual.shape}, PyTorch {expected.shape}")
        difference = float(np.max(np.abs(actual - expected)))
        if not np.allclose(actual, expected, atol=PARITY_ATOL, rtol=PARITY_RTOL):
            raise ParityError(f"batch {size}: ONNX and PyTorch outputs differ by up to {difference:.3g}")
        worst = max(worst, difference)
    logger.info("ONNX parity at batch sizes %s: max |difference| %.2g", batch_sizes, worst)
    return ParityReport(tuple(batch_sizes), worst)
