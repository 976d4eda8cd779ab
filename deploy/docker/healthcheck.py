"""Docker HEALTHCHECK for cnnserve: exit 0 when grpc.health.v1 reports SERVING for the whole server.

Asks 127.0.0.1 on CNNSERVE_GRPC_PORT (default 8001) for the overall service "" (or CNNSERVE_HEALTH_SERVICE).
Exits 1 when the answer is anything but SERVING, when the call fails, or when it takes longer than
CNNSERVE_HEALTH_TIMEOUT_SECONDS (default 3). Uses only grpcio and grpcio-health-checking, both in the image.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = os.environ.get("CNNSERVE_GRPC_PORT", "8001")
    service = os.environ.get("CNNSERVE_HEALTH_SERVICE", "")
    timeout = float(os.environ.get("CNNSERVE_HEALTH_TIMEOUT_SECONDS", "3"))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
