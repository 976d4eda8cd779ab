"""The metrics port: Prometheus' `/metrics` and KServe's REST health paths, nothing else.

Why health over HTTP beside gRPC health: Kubernetes' native gRPC probes and a container's health check cannot
speak TLS, so with TLS on they can never see the server ready. The metrics port is plain HTTP on every
deployment, and KServe v2 defines the paths probes expect:

- `GET /v2/health/live`: 200 while the process serves;
- `GET /v2/health/ready`: 200 when the server is ready (see `readiness`), else 503;
- `GET /v2/models/{name}[/versions/{version}]/ready`: 200 when the model (version) is ready, 503 when it is
  not, 404 when the server does not know it;
- `GET /metrics`: the Prometheus exposition of the server's registry, after `before_scrape` (which brings in
  what the request path counted but has not written yet).

Any other path answers 404, and any other method 405. The server is a small threaded WSGI server in a daemon
thread, so a slow scrape never touches the event loop.
"""

from __future__ import annotations

import logging
import re
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from cnnserve.server.readiness import Readiness

_log = logging.getLogger(__name__)
_MODEL_READY = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>\d+))?/ready$")
_StartResponse = Callable[..., Any]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: probes and scrapes arrive every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def health_and_metrics_app(
    registry: CollectorRegistry, readiness: Readiness, before_scrape: Callable[[], None] | None = None
) -> Callable[..., Iterable[bytes]]:
    """The WSGI application of the metrics port."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if before_scrape is not None:
                try:
                    before_scrape()
                except Exception:
                    _log.warning("could not bring in the latest counts before a scrape", exc_info=True)
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", "only GET is served here\n")
        if path == "/v2/health/live":
            return _status(start_response, readiness.live, "live")
        if path == "/v2/health/ready":
            missing = readiness.missing()
            detail = f"not ready: waiting for {', '.join(missing)}" if missing else "not ready"
            return _status(start_response, readiness.ready, "ready", detail)
        found = _MODEL_READY.match(path)
        if found:
            version = int(found["version"]) if found["version"] else None
            ready = readiness.model_ready(found["name"], version)
            if ready is None:
                known = f"model {found['name']!r}" + (f" version {version}" if version else "")
                return _answer(start_response, "404 Not Found", f"unknown {known}\n")
            return _status(start_response, ready, "ready")
        return _answer(start_response, "404 Not Found", "not found; see /metrics and /v2/health/{live,ready}\n")

    return app


def serve_health_and_metrics(
    host: str,
    port: int,
    registry: CollectorRegistry,
    readiness: Readiness,
    before_scrape: Callable[[], None] | None = None,
) -> int:
    """Serve the metrics port in a daemon thread; returns the bound port (useful with port 0). `before_scrape` runs
    in the scrape's thread before each /metrics answer."""
    server = make_server(
        host,
        port,
        health_and_metrics_app(registry, readiness, before_scrape),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True).start()
    return int(server.server_port)


def _status(start_response: _StartResponse, ok: bool, what: str, detail: str | None = None) -> Iterable[bytes]:
    if ok:
        return _answer(start_response, "200 OK", f"{what}\n")
    return _answer(start_response, "503 Service Unavailable", f"{detail or 'not ' + what}\n")


def _answer(start_response: _StartResponse, status: str, body: str) -> Iterable[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
