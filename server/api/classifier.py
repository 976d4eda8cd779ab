"""The cnnserve.v1 ImageClassifier service: protobuf in, DataPlane calls, protobuf out."""

from __future__ import annotations

import functools
import struct

import grpc
import numpy as np

from cnnserve.server.api import wire
from cnnserve.server.api.errors import grpc_errors
from cnnserve.server.dataplane import DataPlane
from cnnserve.server.errors import InvalidInputError, ModelNotFoundError
from cnnserve.server.explain import (
    Activations,
    Explanation,
    Method,
    Occlusion,
    Rise,
    explain,
)
from cnnserve.server.model import ModelVersion
from cnnserve.server.postprocess import top_k
from cnnserve.server.preprocess import FloatTensor, ImageInput, PixelTensor
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc

API = "image"
API_EXPLAIN = "explain"


def image_inputs(request: pb.ClassifyRequest) -> list[ImageInput]:
    return [image_input(image, position) for position, image in enumerate(request.images)]


def image_input(image: pb.Image, position: int) -> ImageInput:
    """One image of a request as the preprocessor takes it (the message's bytes, not a copy)."""
    kind = image.WhichOneof("content")
    if kind == "encoded":
        return image.encoded
    if kind == "tensor":
        tensor = image.tensor
        if tensor.dtype == pb.FLOAT32:
            return FloatTensor(tuple(tensor.shape), tensor.data)
        if tensor.dtype == pb.UINT8:
            return PixelTensor(tuple(tensor.shape), tensor.data)
        raise InvalidInputError(f"image {position}: tensor dtype must be UINT8 or FLOAT32")
    raise InvalidInputError(f"image {position} is empty: set `encoded` or `tensor`")


def explain_method(request: pb.ExplainRequest) -> Method:
    """The request's method and options; unset options keep the method's defaults (see server/explain.py)."""
    if request.method in (pb.EXPLAIN_METHOD_UNSPECIFIED, pb.OCCLUSION):
        return Occlusion(patch=request.occlusion.patch, stride=request.occlusion.stride)
    if request.method == pb.ACTIVATIONS:
        return Activations(layer=request.layer)
    if request.method == pb.RISE:
        rise = request.rise
        return Rise(
            masks=rise.masks,
            cells=rise.cells,
            keep=rise.keep,
            seed=rise.seed,
        )
    raise InvalidInputError(f"unknown explanation method {request.method}; use OCCLUSION, RISE or ACTIVATIONS")


_RESULTS = wire.key(pb.ClassifyResponse.DESCRIPTOR, "results", wire.LENGTH_DELIMITED)
_TOP = wire.key(pb.Classification.DESCRIPTOR, "top", wire.LENGTH_DELIMITED)
_PROBABILITIES = wire.key(pb.Classification.DESCRIPTOR, "probabilities", wire.LENGTH_DELIMITED)
_PROBABILITY = wire.key(pb.LabelProbability.DESCRIPTOR, "probability", wire.FIXED32)
_FLOAT32 = struct.Struct("<f").pack


def classify_answer(model: ModelVersion, probabilities: np.ndarray, k: int, with_probabilities: bool) -> bytes:
    """The serialized ClassifyResponse for `probabilities` (one row per image): per row, its `k` most probable
    labels, and every probability when `with_probabilities`.

    Written as bytes (server/api/wire.py), not built as a message: the response's head and each label's name and
    index are serialized once, by protobuf itself, and kept; a call appends the probabilities it found. At k = 1,
    `argmax` picks the label that sorting would (the first of the most probable) at a fraction of the cost; a row
    whose pick is NaN is sorted instead, as `top_k` puts NaN last.
    """
    assert model.metadata is not None
    entries = _label_entries(model.metadata.labels)
    table = probabilities.tolist()
    chosen = probabilities.argmax(axis=1)[:, np.newaxis] if k == 1 else top_k(probabilities, k)
    packed = np.ascontiguousarray(probabilities, dtype="<f4").tobytes() if with_probabilities else b""
    width = 4 * probabilities.shape[1]
    parts = [_answer_head(model.name, model.version)]
    for row, (values, indices) in enumerate(zip(table, chosen.tolist(), strict=True)):
        if k == 1 and values[indices[0]] != values[indices[0]]:  # NaN
            indices = top_k(probabilities[row : row + 1], 1)[0].tolist()
        classification = b"".join(wire.length_delimited(_TOP, entries[i] + _FLOAT32(values[i])) for i in indices)
        if with_probabilities:
            classification += wire.length_delimited(_PROBABILITIES, packed[row * width : (row + 1) * width])
        parts.append(wire.length_delimited(_RESULTS, classification))
    return b"".join(parts)


@functools.lru_cache(maxsize=4096)
def _answer_head(model_name: str, model_version: int) -> bytes:
    return pb.ClassifyResponse(model=model_name, version=model_version).SerializeToString()


def _label_entries(labels: tuple[str, ...]) -> list[bytes]:
    """Per label, its serialized LabelProbability without the probability, up to the probability's key. Kept per
    labels tuple (by identity: hashing a long tuple on every call would cost more than it saves; the tuple is kept
    with its entries, so its id is not reused while they are), for the last _LABEL_ENTRIES_KEPT label sets."""
    kept = _label_entries_kept.get(id(labels))
    if kept is not None and kept[0] is labels:
        return kept[1]
    entries = [
        pb.LabelProbability(label=label, index=index).SerializeToString() + _PROBABILITY
        for index, label in enumerate(labels)
    ]
    if len(_label_entries_kept) >= _LABEL_ENTRIES_KEPT:
        _label_entries_kept.pop(next(iter(_label_entries_kept)))
    _label_entries_kept[id(labels)] = (labels, entries)
    return entries


_LABEL_ENTRIES_KEPT = 64
_label_entries_kept: dict[int, tuple[tuple[str, ...], list[bytes]]] = {}


def model_info(versions: list[ModelVersion]) -> pb.ModelInfo:
    """Describe a model from its versions (newest first); the newest loaded one supplies the metadata."""
    info = pb.ModelInfo(name=versions[0].name)
    described = next((v for v in versions if v.metadata is not None), None)
    if described is not None and described.metadata is not None:
        meta = described.metadata
        pre = meta.preprocessing
        info.description = meta.description
        info.input.CopyFrom(
            pb.InputSpec(
                channels=pre.channels,
                height=pre.height,
                width=pre.width,
                color=pre.color.value,
                layout=pre.layout.value,
                dtype=pre.dtype.value,
            )
        )
        info.labels.extend(meta.labels)
        info.preprocessing.CopyFrom(
            pb.Preprocessing(
                scale=pre.scale,
                mean=pre.mean,
                std=pre.std,
                invert=pre.invert,
                resize=pre.resize.value,
                crop_ratio=pre.crop_ratio,
                background=pre.background,
            )
        )
        info.output_kind = meta.output_kind.value
        info.activation_layers.extend(activation.layer for activation in meta.activations)
    configured = next((v for v in versions if v.batching is not None), None)
    if configured is not None and configured.batching is not None:
        batching = configured.batching
        info.batching.CopyFrom(
            pb.BatchingSettings(
                max_batch_size=batching.max_batch_size,
                max_queue_delay_microseconds=round(batching.max_queue_delay_seconds * 1e6),
                max_queue_size=batching.max_queue_size,
                preferred_batch_sizes=batching.preferred_batch_sizes,
                default_timeout_microseconds=round(batching.default_timeout_seconds * 1e6),
                instances=batching.instances,
                priority_levels=batching.priority_levels,
                default_priority_level=batching.default_priority,
                adaptive_queue_delay=batching.adaptive_queue_delay,
                batch_buckets=batching.batch_buckets,
            )
        )
    with_runtime = next((v for v in versions if v.runtime is not None), None)
    if with_runtime is not None and with_runtime.runtime is not None:
        runtime = with_runtime.runtime
        info.runtime.CopyFrom(
            pb.RuntimeSettings(
                execution_provider=runtime.execution_provider.value,
                cuda_device_id=runtime.cuda_device_id,
                cuda_memory_limit_bytes=runtime.cuda_memory_limit_bytes,
                intra_op_threads=runtime.intra_op_threads,
                inter_op_threads=runtime.inter_op_threads,
                graph_optimization=runtime.graph_optimization.value,
                io_binding=runtime.io_binding,
                precision=runtime.precision.value,
                fp16_max_disagreement=runtime.fp16_max_disagreement,
                cuda_graphs=runtime.cuda_graphs,
                cudnn_conv_algo_search=runtime.cudnn_conv_algo_search.value,
                cuda_tf32=runtime.cuda_tf32,
            )
        )
    for v in versions:
        s = v.statistics
        stats = pb.ModelStatistics(
            request_count=s.success.count,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            batch_size_counts=s.batch_size_counts,
        )
        info.versions.append(
            pb.VersionInfo(
                version=v.version,
                state=v.state.value,
                ready=v.ready,
                reason=v.reason,
                execution_provider=v.provider,
                statistics=stats,
                provider_fallback_reason=v.fallback_reason,
                run=run_info(v),
            )
        )
    info.ready = any(v.ready for v in versions)
    return info


def run_info(version: ModelVersion) -> pb.RunInfo | None:
    info = version.run_info
    if info is None or version.runtime is None:
        return None
    plan = info.plan
    return pb.RunInfo(
        precision=version.runtime.precision.value,
        io_binding=plan.io_binding,
        cuda_graphs=plan.cuda_graphs,
        batch_buckets=plan.buckets,
        warmed_batch_sizes=info.warmed_sizes,
        fp16_top1_agreement=info.fp16_agreement.agreement if info.fp16_agreement is not None else 0.0,
    )


class ImageClassifierServicer(pb_grpc.ImageClassifierServicer):
    SERIALIZED_ANSWERS = frozenset({"Classify"})
    """Classify answers with bytes (`classify_answer`), which its registration sends as they are."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    @grpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> bytes:
        dataplane = self._dataplane

        async def classify(model: ModelVersion) -> np.ndarray:
            assert model.metadata is not None
            label_count = len(model.metadata.labels)
            k = request.top_k or 1
            if not 1 <= k <= label_count:
                raise InvalidInputError(f"top_k must be between 1 and {label_count} for {model.name}, got {k}")
            deadline = dataplane.deadline(model, context.time_remaining())
            return await dataplane.classify_images(model, image_inputs(request), deadline)

        model, probabilities = await dataplane.observe(API, request.model, request.version, classify)
        return classify_answer(model, probabilities, request.top_k or 1, request.return_probabilities)

    @grpc_errors
    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        dataplane = self._dataplane
        deadline = dataplane.explanation_deadline(context.time_remaining())

        async def run(model: ModelVersion) -> Explanation:
            method = explain_method(request)
            limit = dataplane.settings.max_explanation_rows
            if request.max_rows < 0 or request.max_rows > limit:
                raise InvalidInputError(
                    f"max_rows must be between 0 (the server's limit) and {limit}, got {request.max_rows}"
                )
            image = image_input(request.image, 0)
            explanation = await explain(
                model,
                image,
                method,
                label=request.label,
                max_rows=request.max_rows or limit,
                deadline=deadline,
                overlay=request.overlay_png,
            )
            dataplane.metrics.explained(model, method.name, explanation.rows)
            return explanation

        model, explanation = await dataplane.observe(
            API_EXPLAIN, request.model, request.version, run, model_statistics=False
        )
        response = pb.ExplainResponse(
            model=model.name,
            version=model.version,
            label=explanation.label,
            index=explanation.index,
            probability=explanation.probability,
            overlay_png=explanation.overlay_png or b"",
            method=request.method or pb.OCCLUSION,
            rows=explanation.rows,
            layer=explanation.layer,
            activations_png=explanation.activations_png or b"",
        )
        if (saliency := explanation.saliency) is not None:
            response.saliency.CopyFrom(
                pb.Tensor(dtype=pb.FLOAT32, shape=saliency.shape, data=saliency.astype("<f4").tobytes())
            )
        return response

    @grpc_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        repository = self._dataplane.repository
        await repository.refresh_statistics()
        return pb.ListModelsResponse(models=[model_info(list(repository.versions(n))) for n in repository.names()])

    @grpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        repository = self._dataplane.repository
        versions = list(repository.versions(request.name))
        if not versions:
            raise ModelNotFoundError(
                f"unknown model {request.name!r}; the models served here are: {', '.join(repository.names()) or 'none'}"
            )
        await repository.refresh_statistics()
        return model_info(versions)
