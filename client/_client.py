"""The blocking client."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import grpc
from cnnserve.client._exceptions import from_rpc_error
from cnnserve.client._images import ImageLike, to_image_message
from cnnserve.client._types import ClassificationResult, Prediction

from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 30.0


class Client:
    """Classify images with a cnnserve server.

    >>> with Client("127.0.0.1:8001") as client:
    ...     result = client.classify(["digit.png"], model="mnist_net")[0]
    ...     print(result.label, result.probability)
    """

    def __init__(self, target: str = "127.0.0.1:8001", *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)

    def classify(
        self,
        images: Iterable[ImageLike],
        *,
        model: str,
        top_k: int = 1,
        version: int = 0,
        return_probabilities: bool = False,
        timeout: float | None = None,
    ) -> list[ClassificationResult]:
        """One result per image, in order. Raises a ServerError subclass for an error status, ImageError for an
        image that cannot be read."""
        request = pb.ClassifyRequest(
            model=model,
            version=version,
            images=[to_image_message(image) for image in images],
            top_k=top_k,
            return_probabilities=return_probabilities,
        )
        try:
            response = self._stub.Classify(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [
            ClassificationResult(
                predictions=tuple(Prediction(p.label, p.index, p.probability) for p in result.top),
                probabilities=tuple(result.probabilities),
            )
            for result in response.results
        ]

    def models(self) -> list[pb.ModelInfo]:
        try:
            return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def model(self, name: str) -> pb.ModelInfo:
        try:
            return self._stub.GetModel(pb.GetModelRequest(name=name), timeout=self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
