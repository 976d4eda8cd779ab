"""What Client and AsyncClient share: settings, requests, answers, and the bookkeeping of classify_many.

Only the waiting differs between the two clients (blocking futures or awaitables); everything that decides what to
send and what an answer means lives here, once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import grpc
from grpc_health.v1 import health_pb2

from cnnserve.client._config import ClientSettings, Keepalive, LoadBalancing, RetryPolicy, TLSConfig
from cnnserve.client._exceptions import (
    CnnserveClientError,
    ImageError,
    InvalidInput,
    ProtocolError,
    StatusError,
    from_rpc_error,
)
from cnnserve.client._images import ImageLike, as_image_iterable, encode_image
from cnnserve.client._types import (
    Classification,
    ClassifyOutcome,
    Explanation,
    HealthStatus,
    classifications_from,
    explanation_from,
)
from cnnserve.v1 import classifier_pb2 as pb

DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_SIZE = 16
ExplainMethodName = Literal["occlusion", "rise", "activations"]


@dataclass(frozen=True)
class ClassifyOptions:
    """The per-call arguments of classify, checked once so a bad top_k fails before anything is sent."""

    model: str
    version: int = 0
    top_k: int = 1
    return_probabilities: bool = False

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a model (see Client.models())")
        if self.version < 0:
            raise ValueError(f"version must be 0 (latest ready) or a version number, got {self.version}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")

    def request(self, images: Iterable[pb.Image]) -> pb.ClassifyRequest:
        return pb.ClassifyRequest(
            model=self.model,
            version=self.version,
            images=list(images),
            top_k=self.top_k,
            return_probabilities=self.return_probabilities,
        )


_OTHER_METHODS_OPTIONS: dict[str, tuple[str, ...]] = {
    "occlusion": ("masks", "cells", "keep", "layer"),
    "rise": ("patch", "stride", "layer"),
    "activations": ("patch", "stride", "masks", "cells", "keep"),
}
"""The options each method refuses, those that only another method uses (None means not given)."""


@dataclass(frozen=True)
class ExplainOptions:
    """The per-call arguments of explain, checked once so that a bad option fails before anything is sent.

    None (and a label of None) leaves the choice to the server, whose defaults the proto documents. Options of
    another method are refused rather than ignored: `masks=` without `method="rise"` is a mistake worth reporting,
    and so is `overlay_png=True` with "activations", which draws feature maps rather than a map to overlay.
    """

    model: str
    version: int = 0
    label: str | None = None
    method: ExplainMethodName = "occlusion"
    patch: int | None = None
    stride: int | None = None
    masks: int | None = None
    cells: int | None = None
    keep: float | None = None
    seed: int = 0
    max_rows: int | None = None
    overlay_png: bool = False
    layer: str | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a model (see Client.models())")
        if self.version < 0:
            raise ValueError(f"version must be 0 (latest ready) or a version number, got {self.version}")
        methods = get_args(ExplainMethodName)
        if self.method not in methods:
            raise ValueError(f"method must be one of {', '.join(map(repr, methods))}, got {self.method!r}")
        for name in ("patch", "stride", "masks", "cells", "max_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for the server's default), got {value}")
        if self.keep is not None and not 0 < self.keep < 1:
            raise ValueError(f"keep must be between 0 and 1 (exclusive), got {self.keep}")
        if self.layer is not None and not self.layer:
            raise ValueError("layer must name a layer (see ModelInfo.activation_layers), or be None for the first")
        given = [name for name in _OTHER_METHODS_OPTIONS[self.method] if getattr(self, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot be used with method={self.method!r}")
        if self.method == "activations" and self.overlay_png:
            raise ValueError(
                "overlay_png cannot be used with method='activations': it draws no map to overlay (its feature "
                "maps come back as activations_png)"
            )

    def request(self, image: pb.Image) -> pb.ExplainRequest:
        request = pb.ExplainRequest(
            model=self.model,
            version=self.version,
            image=image,
            label=self.label or "",
            max_rows=self.max_rows or 0,
            overlay_png=self.overlay_png,
        )
        if self.method == "occlusion":
            request.method = pb.OCCLUSION
            request.occlusion.CopyFrom(pb.OcclusionOptions(patch=self.patch or 0, stride=self.stride or 0))
        elif self.method == "rise":
            request.method = pb.RISE
            request.rise.CopyFrom(
                pb.RiseOptions(masks=self.masks or 0, cells=self.cells or 0, keep=self.keep or 0.0, seed=self.seed)
            )
        else:
            request.method = pb.ACTIVATIONS
            request.layer = self.layer or ""
        return request


@dataclass
class PendingBatch:
    """One request of classify_many: the inputs it carries, and the outcomes known before it is sent (images
    that could not be encoded). `outcomes` is complete, in input order, once `finish` or `fail` ran."""

    positions: list[int]
    sources: list[Any]
    images: list[pb.Image]
    outcomes: dict[int, ClassifyOutcome] = field(default_factory=dict)

    @classmethod
    def encode(cls, chunk: list[tuple[int, Any]]) -> PendingBatch:
        """Encode a chunk of (position, source); an image that cannot be encoded becomes its own failed outcome."""
        batch = cls([], [], [])
        for position, source in chunk:
            try:
                image = encode_image(source)
            except ImageError as exc:
                batch.outcomes[position] = ClassifyOutcome(position, source, error=exc)
                continue
            batch.positions.append(position)
            batch.sources.append(source)
            batch.images.append(image)
        return batch

    def finish(self, classifications: list[Classification]) -> None:
        if len(classifications) != len(self.positions):
            answered, sent = len(classifications), len(self.images)
            self.fail(ProtocolError(f"the server answered {answered} results for {sent} images"))
            return
        for position, source, classification in zip(self.positions, self.sources, classifications, strict=True):
            self.outcomes[position] = ClassifyOutcome(position, source, classification=classification)

    def fail(self, error: CnnserveClientError) -> None:
        for position, source in zip(self.positions, self.sources, strict=True):
            self.outcomes[position] = ClassifyOutcome(position, source, error=error)

    def should_split(self, error: CnnserveClientError) -> bool:
        """A request of several images refused as invalid is resent one image per request, so that the broken
        image fails alone and the others are still classified."""
        return isinstance(error, InvalidInput) and len(self.images) > 1

    def singles(self) -> list[PendingBatch]:
        return [PendingBatch([p], [s], [i]) for p, s, i in zip(self.positions, self.sources, self.images, strict=True)]

    def absorb(self, parts: list[PendingBatch]) -> None:
        for part in parts:
            self.outcomes.update(part.outcomes)

    def in_order(self) -> list[ClassifyOutcome]:
        return [self.outcomes[position] for position in sorted(self.outcomes)]


def chunks(images: Iterable[Any], size: int) -> Iterator[list[tuple[int, Any]]]:
    """(position, image) pairs in lists of `size`, drawn lazily so that a huge iterable is never held whole."""
    numbered = enumerate(images)
    while chunk := list(itertools.islice(numbered, size)):
        yield chunk


def check_many_arguments(concurrency: int, batch_size: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def health_status(response: health_pb2.HealthCheckResponse) -> HealthStatus:
    return HealthStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class BaseClient:
    """Settings and the pure parts of every call, shared by Client and AsyncClient."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None,
        retry: RetryPolicy | None,
        keepalive: Keepalive | None,
        tls: TLSConfig | None,
        auth_token: str | None,
        load_balancing: LoadBalancing,
        wait_for_ready: bool,
    ) -> None:
        self.settings = ClientSettings(
            target=target,
            timeout=timeout,
            retry=retry,
            keepalive=keepalive or Keepalive(),
            tls=tls,
            auth_token=auth_token,
            load_balancing=load_balancing,
            wait_for_ready=wait_for_ready,
        )
        self._credentials = tls.credentials() if tls is not None else None
        self._options = self.settings.channel_options()

    @property
    def target(self) -> str:
        return self.settings.target

    def _call_arguments(self, timeout: float | None, request_id: str | None) -> dict[str, Any]:
        """Keyword arguments of one stub call: its deadline (the client's default unless given), metadata and
        wait_for_ready."""
        return {
            "timeout": self.settings.timeout if timeout is None else timeout,
            "metadata": self.settings.metadata(request_id),
            "wait_for_ready": self.settings.wait_for_ready,
        }

    @staticmethod
    def _classify_request(images: ImageLike | Iterable[ImageLike], options: ClassifyOptions) -> pb.ClassifyRequest:
        return options.request(encode_image(image) for image in as_image_iterable(images))

    @staticmethod
    def _classifications(response: pb.ClassifyResponse, sent: int) -> list[Classification]:
        results = classifications_from(response)
        if len(results) != sent:
            raise ProtocolError(f"the server answered {len(results)} results for {sent} images")
        return results

    @staticmethod
    def _explain_request(image: ImageLike, options: ExplainOptions) -> pb.ExplainRequest:
        """Raises ImageError, before sending, for an image that cannot be read or is a preprocessed float32 input
        (which cannot be drawn on)."""
        message = encode_image(image)
        if message.HasField("tensor") and message.tensor.dtype == pb.FLOAT32:
            raise ImageError(
                "explain needs a picture (a file, encoded bytes, a PIL image or uint8 pixels), not a float32 "
                "model input"
            )
        return options.request(message)

    @staticmethod
    def _explanation(response: pb.ExplainResponse) -> Explanation:
        return explanation_from(response)

    @staticmethod
    def _error(error: grpc.RpcError) -> StatusError:
        return from_rpc_error(error)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.target!r})"
