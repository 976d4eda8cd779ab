"""Open Inference Protocol descriptions of models: metadata, configuration, statistics and the repository index.

A model's input is described as its graph really takes it: the graph's input name ("input" for the models
cnnserve exports), FP32 or UINT8, [-1, C, H, W] or [-1, H, W, C], already preprocessed. Every model has one
output "output" (FP32, [-1, labels]) holding probabilities, since the server turns logits, log-probabilities
and sigmoids into probabilities. The messages are shaped as Triton fills them, so Triton's clients and tools
read them without special cases.
"""

from __future__ import annotations

import json

from cnnserve.inference import grpc_service_pb2 as pb
from cnnserve.inference import model_config_pb2 as mc
from cnnserve.metadata import InputType, Layout
from cnnserve.repository_layout import MODEL_FILE
from cnnserve.server.api.inference_tensors import OUTPUT_NAME
from cnnserve.server.errors import InvalidInputError, ModelNotFoundError
from cnnserve.server.model import ModelState, ModelVersion
from cnnserve.server.repository import RepositoryEntry, ServedVersions
from cnnserve.server.settings import BatchingSettings
from cnnserve.server.statistics import DurationStatistic

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
_CUDA_PROVIDER = "CUDAExecutionProvider"
_DATATYPES = {InputType.FLOAT32: "FP32", InputType.UINT8: "UINT8"}
_CONFIG_TYPES = {InputType.FLOAT32: mc.TYPE_FP32, InputType.UINT8: mc.TYPE_UINT8}
_FORMATS = {Layout.NCHW: mc.ModelInput.FORMAT_NCHW, Layout.NHWC: mc.ModelInput.FORMAT_NHWC}
_TRITON_STATES = {ModelState.FAILED.value: "UNAVAILABLE"}
"""Triton knows no FAILED: a version that failed to load is UNAVAILABLE with the failure as its reason."""


def version_number(text: str) -> int:
    """The protocol's version string as cnnserve's version number; 0 (newest ready) for "" (or Triton's "-1")."""
    if text in ("", "-1"):
        return 0
    if not text.isdigit():
        raise InvalidInputError(f"model version must be a positive integer or empty, got {text!r}")
    return int(text)


def unknown_model(name: str, version: int) -> ModelNotFoundError:
    """The error Triton answers an unknown model or version with, so clients that match its message still work."""
    suffix = f" version {version}" if version else ""
    return ModelNotFoundError(f"Request for unknown model: '{name}'{suffix} is not found")


def find_model(repository: ServedVersions, name: str, version_text: str) -> ModelVersion:
    """The ready version a request names. Raises ModelNotFoundError (Triton's message) or UnavailableError."""
    version = version_number(version_text)
    try:
        return repository.get(name, version)
    except ModelNotFoundError as exc:
        raise unknown_model(name, version) from exc


def batching_of(model: ModelVersion) -> BatchingSettings:
    if model.batching is not None:
        return model.batching
    assert model.batcher is not None
    return model.batcher.settings


def input_shape_of(model: ModelVersion) -> tuple[int, ...]:
    assert model.preprocessor is not None
    return model.preprocessor.input_shape


def input_name_of(model: ModelVersion) -> str:
    """The graph's input name."""
    assert model.spec is not None
    return model.spec.input_name


def input_datatype_of(model: ModelVersion) -> str:
    """The protocol's data type of the graph's input: "FP32" or "UINT8"."""
    assert model.metadata is not None
    return _DATATYPES[model.metadata.preprocessing.dtype]


def label_count_of(model: ModelVersion) -> int:
    assert model.metadata is not None
    return len(model.metadata.labels)


def model_metadata(repository: ServedVersions, model: ModelVersion) -> pb.ModelMetadataResponse:
    ready = [str(v.version) for v in repository.versions(model.name) if v.ready]
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=ready,
        platform=PLATFORM,
        inputs=[
            tensor(name=input_name_of(model), datatype=input_datatype_of(model), shape=[-1, *input_shape_of(model)])
        ],
        outputs=[tensor(name=OUTPUT_NAME, datatype="FP32", shape=[-1, label_count_of(model)])],
    )


def model_config(model: ModelVersion) -> mc.ModelConfig:
    """The model as a Triton model configuration; `dims` leave out the batch dimension, as Triton's do."""
    assert model.metadata is not None
    pre = model.metadata.preprocessing
    batching = batching_of(model)
    on_gpu = model.provider == _CUDA_PROVIDER
    gpus = [model.runtime.cuda_device_id] if on_gpu and model.runtime is not None else []
    timeout_us = round(batching.default_timeout_seconds * 1e6)
    return mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=batching.max_batch_size,
        input=[
            mc.ModelInput(
                name=input_name_of(model),
                data_type=_CONFIG_TYPES[pre.dtype],
                format=_FORMATS[pre.layout],
                dims=list(input_shape_of(model)),
            )
        ],
        output=[mc.ModelOutput(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[label_count_of(model)])],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(batching.preferred_batch_sizes),
            max_queue_delay_microseconds=round(batching.max_queue_delay_seconds * 1e6),
            priority_levels=batching.priority_levels,
            default_priority_level=batching.default_priority,
            default_queue_policy=mc.ModelQueuePolicy(
                timeout_action=mc.ModelQueuePolicy.REJECT,
                default_timeout_microseconds=timeout_us,
                allow_timeout_override=True,
                max_queue_size=batching.max_queue_size,
            ),
        ),
        instance_group=[
            mc.ModelInstanceGroup(
                name=model.name,
                kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU,
                count=batching.instances,
                gpus=gpus,
            )
        ],
        default_model_filename=MODEL_FILE,
        parameters={
            "labels": mc.ModelParameter(string_value=json.dumps(list(model.metadata.labels))),
            "output_kind": mc.ModelParameter(string_value=model.metadata.output_kind.value),
            "execution_provider": mc.ModelParameter(string_value=model.provider),
            **run_parameters(model),
        },
    )


def run_parameters(model: ModelVersion) -> dict[str, mc.ModelParameter]:
    """How the version's batches really run, as string parameters (Triton's configuration has no fields for
    cnnserve's precision conversion, IO binding or batch buckets)."""
    info = model.run_info
    if info is None or model.runtime is None:
        return {}
    plan = info.plan
    return {
        "precision": mc.ModelParameter(string_value=model.runtime.precision.value),
        "io_binding": mc.ModelParameter(string_value=str(plan.io_binding).lower()),
        "cuda_graphs": mc.ModelParameter(string_value=str(plan.cuda_graphs).lower()),
        "batch_buckets": mc.ModelParameter(string_value=json.dumps(list(plan.buckets))),
    }


def _duration(statistic: DurationStatistic) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=statistic.count, ns=statistic.total_ns)


def model_statistics(model: ModelVersion) -> pb.ModelStatistics:
    s = model.statistics
    return pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(batch.compute_input),
                compute_infer=_duration(batch.compute_infer),
                compute_output=_duration(batch.compute_output),
            )
            for size, batch in sorted(s.batches.items())
        ],
    )


def statistics_of(repository: ServedVersions, name: str, version_text: str) -> pb.ModelStatisticsResponse:
    """Every version of every model for an empty name; every version of `name` for an empty version."""
    version = version_number(version_text)
    if not name:
        versions = list(repository.versions())
    else:
        versions = [v for v in repository.versions(name) if not version or v.version == version]
        if not versions:
            raise unknown_model(name, version)
    return pb.ModelStatisticsResponse(model_stats=[model_statistics(v) for v in versions])


def index_entry(entry: RepositoryEntry) -> pb.RepositoryIndexResponse.ModelIndex:
    return pb.RepositoryIndexResponse.ModelIndex(
        name=entry.name,
        version=str(entry.version),
        state=_TRITON_STATES.get(entry.state, entry.state),
        reason=entry.reason,
    )
