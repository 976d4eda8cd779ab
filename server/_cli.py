"""`cnnserve serve`: flags generated from ServerSettings, so every setting has exactly one flag and one
environment variable (`--max-batch-size` / `CNNSERVE_MAX_BATCH_SIZE`) and the two can never drift apart.

Flags default to None, so only flags actually given override the environment and the config file. The server
itself (and onnxruntime) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from cnnserve.server.settings import ServerSettings

SHORT_NAMES = {
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "tls_client_ca_file": "--tls-client-ca",
    "drain_timeout_seconds": "--drain-timeout",
    "default_timeout_seconds": "--default-timeout",
}
"""Fields whose flag is shorter than the field name; the long spelling is accepted too."""


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="serve every model of a repository over gRPC",
        description="Serve every model of a repository over gRPC. Every flag can also be given as the environment "
        "variable CNNSERVE_<FLAG> (e.g. CNNSERVE_GRPC_PORT=8001) or as a key of the --config TOML file; flags win "
        "over the environment, which wins over the file. A model's own <name>/config.toml overrides the batching "
        "and ONNX Runtime defaults for that model.",
    )
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys are the flag names with _)")
    for name, field in ServerSettings.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"]
        if name in SHORT_NAMES:
            flags.insert(0, SHORT_NAMES[name])
        parser.add_argument(
            *flags, dest=name, metavar=name.upper(), default=None, help=_help(field), **_argument_kind(field.annotation)
        )
    parser.set_defaults(run=_run)


def _argument_kind(annotation: Any) -> dict[str, Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is tuple:
        return {"type": typing.get_args(annotation)[0], "nargs": "*"}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"choices": [member.value for member in annotation]}
    return {"type": annotation}


def _help(field: Any) -> str:
    default = field.default
    shown = getattr(default, "value", default)
    description = field.description or ""
    if field.is_required() or shown is None or shown == ():
        return description
    return f"{description}{'; ' if description else ''}default {shown}"


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from the flags given, over the environment, over the --config file."""
    given = {name: getattr(args, name) for name in ServerSettings.model_fields if getattr(args, name) is not None}
    return ServerSettings.load(args.config, **given)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from cnnserve.server.app import serve
    from cnnserve.server.errors import ExecutionProviderError

    try:
        settings = settings_from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"cnnserve serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except ExecutionProviderError as exc:
        print(f"cnnserve serve: {exc}", file=sys.stderr)
        return 3
    return 0
