from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]

class ExplainMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLAIN_METHOD_UNSPECIFIED: _ClassVar[ExplainMethod]
    OCCLUSION: _ClassVar[ExplainMethod]
    RISE: _ClassVar[ExplainMethod]
    ACTIVATIONS: _ClassVar[ExplainMethod]
DATA_TYPE_UNSPECIFIED: DataType
UINT8: DataType
FLOAT32: DataType
EXPLAIN_METHOD_UNSPECIFIED: ExplainMethod
OCCLUSION: ExplainMethod
RISE: ExplainMethod
ACTIVATIONS: ExplainMethod

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "images", "top_k", "return_probabilities")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    return_probabilities: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., return_probabilities: _Optional[bool] = ...) -> None: ...

class LabelProbability(_message.Message):
    __slots__ = ("label", "index", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    probability: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("top", "probabilities")
    TOP_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[LabelProbability]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, top: _Optional[_Iterable[_Union[LabelProbability, _Mapping]]] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("channels", "height", "width", "color", "layout", "dtype")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    color: str
    layout: str
    dtype: str
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., color: _Optional[str] = ..., layout: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("scale", "mean", "std", "invert", "resize", "crop_ratio", "background")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_RATIO_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    scale: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    invert: bool
    resize: str
    crop_ratio: float
    background: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scale: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., invert: _Optional[bool] = ..., resize: _Optional[str] = ..., crop_ratio: _Optional[float] = ..., background: _Optional[_Iterable[int]] = ...) -> None: ...

class BatchingSettings(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_microseconds", "max_queue_size", "preferred_batch_sizes", "default_timeout_microseconds", "instances", "priority_levels", "default_priority_level", "adaptive_queue_delay", "batch_buckets")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIMEOUT_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_LEVELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRIORITY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_QUEUE_DELAY_FIELD_NUMBER: _ClassVar[int]
    BATCH_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_microseconds: int
    max_queue_size: int
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    default_timeout_microseconds: int
    instances: int
    priority_levels: int
    default_priority_level: int
    adaptive_queue_delay: bool
    batch_buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_microseconds: _Optional[int] = ..., max_queue_size: _Optional[int] = ..., preferred_batch_sizes: _Optional[_Iterable[int]] = ..., default_timeout_microseconds: _Optional[int] = ..., instances: _Optional[int] = ..., priority_levels: _Optional[int] = ..., default_priority_level: _Optional[int] = ..., adaptive_queue_delay: _Optional[bool] = ..., batch_buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class RuntimeSettings(_message.Message):
    __slots__ = ("execution_provider", "cuda_device_id", "cuda_memory_limit_bytes", "intra_op_threads", "inter_op_threads", "graph_optimization", "io_binding", "precision", "fp16_max_disagreement", "cuda_graphs", "cudnn_conv_algo_search", "cuda_tf32")
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CUDA_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CUDA_MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    IO_BINDING_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    FP16_MAX_DISAGREEMENT_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    CUDNN_CONV_ALGO_SEARCH_FIELD_NUMBER: _ClassVar[int]
    CUDA_TF32_FIELD_NUMBER: _ClassVar[int]
    execution_provider: str
    cuda_device_id: int
    cuda_memory_limit_bytes: int
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: str
    io_binding: bool
    precision: str
    fp16_max_disagreement: float
    cuda_graphs: bool
    cudnn_conv_algo_search: str
    cuda_tf32: bool
    def __init__(self, execution_provider: _Optional[str] = ..., cuda_device_id: _Optional[int] = ..., cuda_memory_limit_bytes: _Optional[int] = ..., intra_op_threads: _Optional[int] = ..., inter_op_threads: _Optional[int] = ..., graph_optimization: _Optional[str] = ..., io_binding: _Optional[bool] = ..., precision: _Optional[str] = ..., fp16_max_disagreement: _Optional[float] = ..., cuda_graphs: _Optional[bool] = ..., cudnn_conv_algo_search: _Optional[str] = ..., cuda_tf32: _Optional[bool] = ...) -> None: ...

class ModelStatistics(_message.Message):
    __slots__ = ("request_count", "inference_count", "execution_count", "batch_size_counts")
    class BatchSizeCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    request_count: int
    inference_count: int
    execution_count: int
    batch_size_counts: _containers.ScalarMap[int, int]
    def __init__(self, request_count: _Optional[int] = ..., inference_count: _Optional[int] = ..., execution_count: _Optional[int] = ..., batch_size_counts: _Optional[_Mapping[int, int]] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "state", "ready", "reason", "execution_provider", "statistics", "provider_fallback_reason", "run")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    ready: bool
    reason: str
    execution_provider: str
    statistics: ModelStatistics
    provider_fallback_reason: str
    run: RunInfo
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., ready: _Optional[bool] = ..., reason: _Optional[str] = ..., execution_provider: _Optional[str] = ..., statistics: _Optional[_Union[ModelStatistics, _Mapping]] = ..., provider_fallback_reason: _Optional[str] = ..., run: _Optional[_Union[RunInfo, _Mapping]] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("precision", "io_binding", "cuda_graphs", "batch_buckets", "warmed_batch_sizes", "fp16_top1_agreement")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    IO_BINDING_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    WARMED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    FP16_TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    precision: str
    io_binding: bool
    cuda_graphs: bool
    batch_buckets: _containers.RepeatedScalarFieldContainer[int]
    warmed_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    fp16_top1_agreement: float
    def __init__(self, precision: _Optional[str] = ..., io_binding: _Optional[bool] = ..., cuda_graphs: _Optional[bool] = ..., batch_buckets: _Optional[_Iterable[int]] = ..., warmed_batch_sizes: _Optional[_Iterable[int]] = ..., fp16_top1_agreement: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "description", "input", "labels", "preprocessing", "output_kind", "batching", "versions", "ready", "runtime", "activation_layers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    input: InputSpec
    labels: _containers.RepeatedScalarFieldContainer[str]
    preprocessing: Preprocessing
    output_kind: str
    batching: BatchingSettings
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    ready: bool
    runtime: RuntimeSettings
    activation_layers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., output_kind: _Optional[str] = ..., batching: _Optional[_Union[BatchingSettings, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., ready: _Optional[bool] = ..., runtime: _Optional[_Union[RuntimeSettings, _Mapping]] = ..., activation_layers: _Optional[_Iterable[str]] = ...) -> None: ...

class OcclusionOptions(_message.Message):
    __slots__ = ("patch", "stride")
    PATCH_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    patch: int
    stride: int
    def __init__(self, patch: _Optional[int] = ..., stride: _Optional[int] = ...) -> None: ...

class RiseOptions(_message.Message):
    __slots__ = ("masks", "cells", "keep", "seed")
    MASKS_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    masks: int
    cells: int
    keep: float
    seed: int
    def __init__(self, masks: _Optional[int] = ..., cells: _Optional[int] = ..., keep: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "version", "image", "label", "method", "occlusion", "rise", "max_rows", "overlay_png", "layer")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    RISE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    image: Image
    label: str
    method: ExplainMethod
    occlusion: OcclusionOptions
    rise: RiseOptions
    max_rows: int
    overlay_png: bool
    layer: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., label: _Optional[str] = ..., method: _Optional[_Union[ExplainMethod, str]] = ..., occlusion: _Optional[_Union[OcclusionOptions, _Mapping]] = ..., rise: _Optional[_Union[RiseOptions, _Mapping]] = ..., max_rows: _Optional[int] = ..., overlay_png: _Optional[bool] = ..., layer: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "version", "label", "index", "probability", "saliency", "overlay_png", "method", "rows", "layer", "activations_png")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SALIENCY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_PNG_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    label: str
    index: int
    probability: float
    saliency: Tensor
    overlay_png: bytes
    method: ExplainMethod
    rows: int
    layer: str
    activations_png: bytes
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., index: _Optional[int] = ..., probability: _Optional[float] = ..., saliency: _Optional[_Union[Tensor, _Mapping]] = ..., overlay_png: _Optional[bytes] = ..., method: _Optional[_Union[ExplainMethod, str]] = ..., rows: _Optional[int] = ..., layer: _Optional[str] = ..., activations_png: _Optional[bytes] = ...) -> None: ...
