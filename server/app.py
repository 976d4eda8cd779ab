"""The server process: load the repository, serve gRPC and metrics, shut down gracefully.

Start-up: metrics and gRPC listen first (health NOT_SERVING, so probes and clients can see the server is there
but not ready), every model loads and warms up, then health turns SERVING. Shutdown on SIGTERM or SIGINT: health
turns NOT_SERVING at once, new calls are refused with UNAVAILABLE, accepted calls get up to `drain_timeout_seconds`
to finish (what is still queued then is refused with UNAVAILABLE too), and only then does the gRPC server stop, so
that no call it had received is CANCELLED. Then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cnnserve.inference import grpc_service_pb2_grpc as inference_pb2_grpc
from cnnserve.server.api.classifier import ImageClassifierServicer
from cnnserve.server.api.inference import SERVICE_NAME as INFERENCE_SERVICE
from cnnserve.server.api.inference import InferenceServicer
from cnnserve.server.api.registration import add_reflection, add_service
from cnnserve.server.auth import BearerTokenInterceptor, read_tokens
from cnnserve.server.dataplane import DataPlane
from cnnserve.server.drain import CallGate
from cnnserve.server.engine_client import EngineClient, RemoteRepository
from cnnserve.server.heap import settle_heap
from cnnserve.server.http_port import serve_health_and_metrics
from cnnserve.server.launcher import write_port_file
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.repository import ModelRepository, ServedVersions
from cnnserve.server.runtime import quiet_onnxruntime
from cnnserve.server.settings import ServerSettings
from cnnserve.server.shared_memory import SystemSharedMemory
from cnnserve.v1 import classifier_pb2, classifier_pb2_grpc

_log = logging.getLogger(__name__)
_STOP_GRACE_SECONDS = 1.0
_GOAWAY_SECONDS = 0.05
"""Time for gRPC to send GOAWAY before parked calls are refused, and for their answers to leave after."""
CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["ImageClassifier"].full_name


class Server:
    """A running cnnserve: `await start()`, then `await wait_for_termination()` or `await stop()`."""

    def __init__(self, settings: ServerSettings, engine: EngineClient | None = None) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.engine = engine
        self.repository: ServedVersions
        gate = CallGate()
        if engine is None:
            # One process: a lone call's batch may run on the event loop (server/batcher.py).
            self.repository = ModelRepository(settings, self.metrics, inline_when=gate.serves_one_call)
            self.metrics.watch_models(self.repository.versions)
        else:
            self.repository = RemoteRepository(settings, engine)
            engine.on_counts_wanted(self.metrics.flush)
            engine.count_calls_with(gate)
        self.dataplane = DataPlane(self.repository, settings, self.metrics, gate)
        self.readiness = self.dataplane.readiness
        self.shared_memory = SystemSharedMemory() if settings.allow_shared_memory else None
        if engine is not None and self.shared_memory is not None:
            engine.use_shared_memory(self.shared_memory)
        self.health = health.aio.HealthServicer()
        self.grpc_port = 0
        self.metrics_port = 0
        tokens = read_tokens(
            settings.auth_token_file, settings.auth_tokens.get_secret_value() if settings.auth_tokens else None
        )
        interceptors: list[grpc.aio.ServerInterceptor] = [BearerTokenInterceptor(tokens)] if tokens else []
        self._grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0 if engine is None else 1),
                ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(max(settings.drain_timeout_seconds, 1.0) * 1000)),
            ],
        )
        self._stopped = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.service_names: list[str] = [CLASSIFIER_SERVICE, INFERENCE_SERVICE]
        self.repository.on_change(self._schedule_health_update)

    async def start(self) -> None:
        """Listen, load every model, then report SERVING. Returns when the server is ready (or failed models)."""
        quiet_onnxruntime()
        settings = self.settings
        # Ids made up for calls that bring none are worth sending back only where the request log records them.
        logged = settings.request_log
        add_service(
            self._grpc,
            inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            InferenceServicer(self.dataplane, self.shared_memory),
            make_up_request_ids=logged,
        )
        add_service(
            self._grpc,
            classifier_pb2_grpc.add_ImageClassifierServicer_to_server,
            ImageClassifierServicer(self.dataplane),
            make_up_request_ids=logged,
        )
        add_service(self._grpc, health_pb2_grpc.add_HealthServicer_to_server, self.health, make_up_request_ids=logged)
        services = (*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        add_reflection(self._grpc, (*services, reflection.SERVICE_NAME))
        for service in ("", *self.service_names):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.engine is None:
            self.metrics_port = serve_health_and_metrics(
                settings.host,
                settings.metrics_port,
                self.metrics.registry,
                self.readiness,
                before_scrape=self.metrics.flush_threadsafe,
            )
        else:
            await self.engine.connect()
        address = f"{settings.host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        if credentials is None:
            self.grpc_port = self._grpc.add_insecure_port(address)
            _log.warning("serving PLAINTEXT gRPC on %s:%d (no TLS configured)", settings.host, self.grpc_port)
        else:
            self.grpc_port = self._grpc.add_secure_port(address, credentials)
            _log.info(
                "serving gRPC over TLS%s on %s:%d",
                " with client certificates required" if settings.tls_client_ca_file else "",
                settings.host,
                self.grpc_port,
            )
        await self._grpc.start()
        if self.settings.auth_token_file or self.settings.auth_tokens:
            _log.info("bearer-token authentication is on for every RPC but health and reflection")
        if self.engine is None:
            _log.info(
                "metrics and REST health on http://%s:%d (/metrics, /v2/health/ready)", settings.host, self.metrics_port
            )
        await self.repository.load_all()
        for version in self.repository.versions():
            _log.info(
                "model %s v%d: %s on %s%s",
                version.name,
                version.version,
                version.state.value,
                version.provider or "-",
                f" ({version.reason})" if version.reason else "",
            )
        await self._update_health()
        unknown = sorted(set(settings.required_models) - set(self.repository.names()))
        if unknown:
            _log.error("required models %s are not in the repository %s", unknown, settings.model_repository)
        if self.readiness.ready:
            _log.info(
                "ready: %d model(s) serving", sum(bool(self.readiness.model_ready(n)) for n in self.repository.names())
            )
        else:
            _log.error(
                "not ready: %s did not load; health stays NOT_SERVING (GetModel tells why)",
                ", ".join(self.readiness.missing()),
            )
        if settings.repository_poll_seconds > 0 and isinstance(self.repository, ModelRepository):
            self._poller = asyncio.create_task(self.repository.poll(settings.repository_poll_seconds))
        if settings.port_file is not None:
            write_port_file(settings.port_file, {"grpc_port": self.grpc_port, "metrics_port": self.metrics_port})

    async def stop(self) -> None:
        """Drain and stop; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.readiness.shutting_down()
        drain = self.settings.drain_timeout_seconds
        _log.info("shutting down: NOT_SERVING now, draining for up to %.1fs", drain)
        await self.health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()
        gate = self.dataplane.gate
        if not await gate.drain(timeout=drain):
            _log.warning("drain timeout: requests still queued are answered UNAVAILABLE")
        await self.repository.close(drain_seconds=0)
        # Every call received so far is answered or parked. Stop listening (GOAWAY: clients go elsewhere), then
        # refuse the parked calls within gRPC's grace; streams (Health.Watch) must not hold the shutdown after.
        grace = max(_STOP_GRACE_SECONDS, drain)
        stopping = asyncio.create_task(self._grpc.stop(grace=grace))
        await asyncio.sleep(_GOAWAY_SECONDS)
        gate.release()
        await gate.refused(timeout=grace)
        await asyncio.sleep(_GOAWAY_SECONDS)
        await self._grpc.stop(grace=None)
        await stopping
        if self.shared_memory is not None:
            self.shared_memory.close()
        self.metrics.flush()
        if self.engine is not None:
            self.engine.close()
        _log.info("stopped")

    async def _update_health(self) -> None:
        """SERVING exactly when the readiness policy says ready; never again once shutdown began."""
        if self._stopped.is_set():
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.readiness.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *self.service_names):
            await self.health.set(service, status)

    def _schedule_health_update(self) -> None:
        task = asyncio.get_running_loop().create_task(self._update_health())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_for_termination(self) -> None:
        await self._grpc.wait_for_termination()


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files, requiring client certificates when a client CA is set."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


async def serve(settings: ServerSettings, engine: EngineClient | None = None) -> int:
    """Run a server (or, with `engine`, a front-end of one) until SIGTERM or SIGINT, then shut it down gracefully;
    the process's exit code.

    A front-end also takes SIGUSR1 from its supervisor: the engine died, so every request fails UNAVAILABLE now.
    A front-end that cannot take in the engine's catalog or regions (`EngineClient.on_broken`) shuts down the
    same way and returns 1, so that its supervisor starts a fresh one.
    """
    settings.apply_to_interpreter()
    server = Server(settings, engine)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    if isinstance(server.repository, RemoteRepository):
        loop.add_signal_handler(signal.SIGUSR1, server.repository.engine_lost)
    if engine is not None:
        engine.on_broken(stop_requested.set)
    _log.info("settings: %s", settings.model_dump_json())
    start = asyncio.create_task(server.start())
    stop_wait = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if start.done():
        start.result()
        settle_heap(settings.gc_young_threshold)
        await stop_wait
    else:
        start.cancel()
    await server.stop()
    return 1 if engine is not None and engine.broken else 0
