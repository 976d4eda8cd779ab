"""Docker HEALTHCHECK for cnnserve: exit 0 when the server is ready, asked the way its settings allow.

Without TLS it asks grpc.health.v1 on 127.0.0.1:CNNSERVE_GRPC_PORT (default 8001) for the overall service ""
(or CNNSERVE_HEALTH_SERVICE). With TLS on (CNNSERVE_TLS_CERT or CNNSERVE_TLS_CERT_FILE set) a plaintext gRPC call
cannot reach it, so it asks KServe's REST path /v2/health/ready on the plain-HTTP metrics port
CNNSERVE_METRICS_PORT (default 8002) instead: the same readiness policy. Exits 1 when the answer is anything but
ready, when the call fails, or when it takes longer than CNNSERVE_HEALTH_TIMEOUT_SECONDS (default 3). Uses only
the standard library, grpcio and grpcio-health-checking, all in the image.
"""

import os
import sys
import urllib.error
import urllib.request


def tls_on() -> bool:
    return any(os.environ.get(name) for name in ("CNNSERVE_TLS_CERT", "CNNSERVE_TLS_CERT_FILE"))


def ready_over_http(timeout: float) -> int:
    port = os.environ.get("CNNSERVE_METRICS_PORT", "8002")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=timeout) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        print(f"unhealthy: HTTP {error.code}: {error.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    return 0


def ready_over_grpc(timeout: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = os.environ.get("CNNSERVE_GRPC_PORT", "8001")
    service = os.environ.get("CNNSERVE_HEALTH_SERVICE", "")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    timeout = float(os.environ.get("CNNSERVE_HEALTH_TIMEOUT_SECONDS", "3"))
    return ready_over_http(timeout) if tls_on() else ready_over_grpc(timeout)


if __name__ == "__main__":
    sys.exit(main())
