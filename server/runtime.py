"""ONNX Runtime sessions and the choice of execution provider.

`onnxruntime-gpu` lists CUDAExecutionProvider as available whether or not the machine has a GPU; it only finds
out when a session is created, and then silently falls back to the CPU. So the provider a model *really* runs on
is read back from the session, and a model that required CUDA and did not get it is an error, not a surprise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from cnnserve.server.capture_guard import CAPTURE_GUARD
from cnnserve.server.errors import ExecutionProviderError
from cnnserve.server.settings import ExecutionProvider, GraphOptimization, RuntimeSettings

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_log = logging.getLogger(__name__)
_OPTIMIZATION_LEVELS = {
    GraphOptimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    GraphOptimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    GraphOptimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    GraphOptimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class LoadedSession:
    session: ort.InferenceSession
    provider: str
    """The provider that runs the graph, as the session reports it."""
    fallback_reason: str = ""
    """Why the session runs on the CPU although CUDA was wanted; empty otherwise."""


def requested_providers(preference: ExecutionProvider, available: list[str]) -> list[str]:
    """The provider list to hand ONNX Runtime, most preferred first.

    Raises ExecutionProviderError when CUDA is required and this ONNX Runtime build has no CUDA provider.
    """
    if preference is ExecutionProvider.CPU:
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if preference is ExecutionProvider.CUDA:
        raise ExecutionProviderError(
            f"CUDA was required but this ONNX Runtime build has no CUDA provider (it offers {available}); "
            "install onnxruntime-gpu, or serve with --execution-provider cpu"
        )
    return [CPU]


def create_session(model_path: Path, options: RuntimeSettings, model: bytes | None = None) -> LoadedSession:
    """Create a session on the best provider allowed, and report what it really got. The graph is read from
    `model_path`, or taken from `model` (a converted copy of it, such as its fp16 form) when given.

    Raises ExecutionProviderError when CUDA was required but could not be initialised, and whatever ONNX
    Runtime raises for an unreadable model.
    """
    providers = requested_providers(options.execution_provider, ort.get_available_providers())
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.graph_optimization_level = _OPTIMIZATION_LEVELS[options.graph_optimization]
    session_options.log_severity_level = 3
    spinning = "1" if options.thread_spinning else "0"
    session_options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    session_options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    provider_list: list[str | tuple[str, dict[str, str]]] = [
        (CUDA, cuda_options(options)) if name == CUDA else name for name in providers
    ]
    source = str(model_path) if model is None else model
    # Creating a CUDA session allocates on the device, which must not happen during another version's graph
    # capture (server/capture_guard.py).
    with CAPTURE_GUARD.using_device_if(CUDA in providers):
        session = ort.InferenceSession(source, session_options, providers=provider_list)
    in_use = session.get_providers()[0]
    fallback_reason = ""
    if CUDA in providers and in_use != CUDA:
        fallback_reason = (
            "CUDAExecutionProvider is built in but could not be initialised (no GPU, or the CUDA/cuDNN "
            "libraries it needs are missing)"
        )
        if options.execution_provider is ExecutionProvider.CUDA:
            raise ExecutionProviderError(
                f"CUDA was required for {model_path} but {fallback_reason}; "
                "serve with --execution-provider cpu or auto to run on the CPU"
            )
        _log.warning("%s: %s; running on %s", model_path, fallback_reason, in_use)
    return LoadedSession(session=session, provider=in_use, fallback_reason=fallback_reason)


def cuda_options(options: RuntimeSettings) -> dict[str, str]:
    """CUDAExecutionProvider options: the device, cuDNN's convolution algorithm search, TF32 (ONNX Runtime turns it
    on unless told), CUDA graphs when asked for, and the memory arena limit when one is set."""
    cuda = {
        "device_id": str(options.cuda_device_id),
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search.value.upper(),
        "use_tf32": "1" if options.cuda_tf32 else "0",
    }
    if options.cuda_graphs:
        cuda["enable_cuda_graph"] = "1"
    if options.cuda_memory_limit_bytes:
        cuda["gpu_mem_limit"] = str(options.cuda_memory_limit_bytes)
    return cuda


def quiet_onnxruntime() -> None:
    """Keep ONNX Runtime's own logger to fatal errors.

    Otherwise every model's CUDA attempt on a machine without a usable GPU prints a red library-loading error;
    the server reports that fallback itself, once per version and in GetModel, and real failures surface as
    exceptions with their message.
    """
    ort.set_default_logger_severity(4)
