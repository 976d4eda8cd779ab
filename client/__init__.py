"""The cnnserve client library: classify images with cnnserve servers over gRPC.

    from cnnserve.client import Client

    with Client("127.0.0.1:8001") as client:
        for result in client.classify(["digit.png"], model="mnist_net", top_k=3):
            print(result.label, result.probability)
        explanation = client.explain("digit.png", model="mnist_net", method="rise")
        print(explanation.label, explanation.saliency.shape)

Everything public is exported here; the modules behind it are private and may change.
"""

from cnnserve.client._async_client import AsyncClient
from cnnserve.client._client import Client
from cnnserve.client._config import Keepalive, RetryPolicy, TLSConfig
from cnnserve.client._exceptions import (
    CnnserveClientError,
    DeadlineExceeded,
    ImageError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    StatusError,
    Unauthenticated,
    Unavailable,
)
from cnnserve.client._images import ImageLike
from cnnserve.client._types import (
    Batching,
    Classification,
    ClassifyOutcome,
    Explanation,
    HealthStatus,
    InputSpec,
    ModelInfo,
    ModelStatistics,
    Prediction,
    Preprocessing,
    VersionInfo,
)

__all__ = [
    "AsyncClient",
    "Batching",
    "Classification",
    "ClassifyOutcome",
    "Client",
    "CnnserveClientError",
    "DeadlineExceeded",
    "Explanation",
    "HealthStatus",
    "ImageError",
    "ImageLike",
    "InputSpec",
    "InvalidInput",
    "Keepalive",
    "ModelInfo",
    "ModelNotFound",
    "ModelStatistics",
    "Overloaded",
    "PermissionDenied",
    "Prediction",
    "Preprocessing",
    "ProtocolError",
    "RetryPolicy",
    "StatusError",
    "TLSConfig",
    "Unauthenticated",
    "Unavailable",
    "VersionInfo",
]
