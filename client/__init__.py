"""The cnnserve client library: classify images with a cnnserve server over gRPC."""

from cnnserve.client._client import Client
from cnnserve.client._exceptions import (
    CnnserveClientError,
    DeadlineExceeded,
    ImageError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    ServerError,
    Unavailable,
)
from cnnserve.client._images import ImageLike
from cnnserve.client._types import ClassificationResult, Prediction

__all__ = [
    "ClassificationResult",
    "Client",
    "CnnserveClientError",
    "DeadlineExceeded",
    "ImageError",
    "ImageLike",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "Prediction",
    "ServerError",
    "Unavailable",
]
