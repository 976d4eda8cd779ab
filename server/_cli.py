"""`cnnserve serve`: argument parsing only; the server is imported when the command runs.

Every flag defaults to None so that only flags actually given override `CNNSERVE_*` environment variables.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="serve every model of a repository over gRPC",
        description="Serve every model of a repository over gRPC. Each flag can also be set by the environment "
        "variable CNNSERVE_<FLAG> (e.g. CNNSERVE_GRPC_PORT).",
    )
    parser.add_argument("--model-repository", type=Path, help="folder of <name>/<version>/model.onnx")
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, help="default 8001; 0 picks a free port")
    parser.add_argument("--metrics-port", type=int, help="default 8002; 0 picks a free port")
    parser.add_argument("--execution-provider", choices=["auto", "cuda", "cpu"], help="default auto")
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per session (0: its choice)")
    parser.add_argument("--max-batch-size", type=int, help="default 32; 1 disables batching")
    parser.add_argument("--max-queue-delay-ms", type=float, help="default 2")
    parser.add_argument("--max-queue-size", type=int, help="images queued per model before refusing; default 1024")
    parser.add_argument("--instances", type=int, help="batches of one model run at once; default 1")
    parser.add_argument("--default-timeout", type=float, help="seconds, for calls without a deadline; default 30")
    parser.add_argument("--drain-timeout", type=float, help="seconds to finish accepted calls on SIGTERM")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain; serve TLS with --tls-key")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client certificates (mTLS)")
    parser.add_argument("--port-file", type=Path, help="write the bound ports here as JSON once ready")
    parser.set_defaults(run=_run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """Build ServerSettings from the flags given, over the environment."""
    from cnnserve.server.settings import BatchingSettings, ServerSettings

    def given(**values: Any) -> dict[str, Any]:
        return {key: value for key, value in values.items() if value is not None}

    top = given(
        model_repository=args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        execution_provider=args.execution_provider,
        intra_op_threads=args.intra_op_threads,
        drain_timeout_seconds=args.drain_timeout,
        port_file=args.port_file,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca,
    )
    batching = given(
        max_batch_size=args.max_batch_size,
        max_queue_delay_seconds=None if args.max_queue_delay_ms is None else args.max_queue_delay_ms / 1000,
        max_queue_size=args.max_queue_size,
        instances=args.instances,
        default_timeout_seconds=args.default_timeout,
    )
    settings = ServerSettings(**top)
    if batching:
        settings = settings.model_copy(
            update={"batching": BatchingSettings(**{**settings.batching.model_dump(), **batching})}
        )
    return settings


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from cnnserve.server.app import serve
    from cnnserve.server.errors import ExecutionProviderError
    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"cnnserve serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except ExecutionProviderError as exc:
        print(f"cnnserve serve: {exc}", file=sys.stderr)
        return 3
    return 0
