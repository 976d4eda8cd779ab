"""`cnnserve classify`, `cnnserve models` and `cnnserve health`: argument parsing only; the commands themselves
are in `_commands` and imported when one runs.

Exit codes, the same for every command, so scripts can branch on them:
  0  done: every image classified (classify), the list printed (models), the server is SERVING (health)
  1  some images could not be classified because of the images (unreadable, not an image, wrong shape), or the
     server answered health with another status than SERVING
  2  usage error (bad flags, no images found)
  3  the server could not be reached or refused the work (unknown model, overloaded, timed out, not authorised)
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Callable
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:8001"


class ExitCode(enum.IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    SERVER_ERROR = 3


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connection = _connection_flags()

    classify = subcommands.add_parser(
        "classify",
        parents=[connection],
        help="classify image files or folders with a running server",
        description="Classify images with a running server: one line per image (or one JSON object with --json), "
        "a progress bar on a terminal, and a summary. Exit codes: 0 all classified, 1 some images failed, "
        "2 usage error, 3 server unreachable or refused the work.",
    )
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (recursive)")
    classify.add_argument("--model", required=True, help="model name, as `cnnserve models` lists it")
    classify.add_argument("--top-k", type=_positive_int, default=1, help="labels per image (default 1)")
    classify.add_argument("--json", action="store_true", help="one JSON object per image per line on stdout")
    classify.add_argument("--concurrency", type=_positive_int, default=4, help="requests in flight at once (default 4)")
    classify.add_argument("--batch-size", type=_positive_int, default=16, help="images per request (default 16)")
    classify.set_defaults(run=_run("run_classify"))

    models = subcommands.add_parser(
        "models", parents=[connection], help="list the models of a running server", description="List the models."
    )
    models.add_argument("--json", action="store_true", help="one JSON object per model per line")
    models.set_defaults(run=_run("run_models"))

    health = subcommands.add_parser(
        "health",
        parents=[connection],
        help="check a running server's health (exit 0 when SERVING)",
        description="Print the server's grpc.health.v1 status. Exit 0 SERVING, 1 any other status, 3 unreachable.",
    )
    health.add_argument("--service", default="", help="a service name; default: the whole server")
    health.set_defaults(run=_run("run_health"))


def _connection_flags() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("CNNSERVE_SERVER", DEFAULT_SERVER),
        help="gRPC target: HOST:PORT, dns:///HOST:PORT (every replica, round robin) or ipv4:A:P,B:P "
        f"(default $CNNSERVE_SERVER or {DEFAULT_SERVER})",
    )
    group.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds per call (default 30)")
    group.add_argument("--tls", action="store_true", help="use TLS, verifying the server with the system's CAs")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="use TLS, verifying the server with this CA")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key, for mutual TLS")
    group.add_argument("--tls-server-name", metavar="NAME", help="name the server's certificate must carry")
    group.add_argument(
        "--auth-token",
        default=os.environ.get("CNNSERVE_AUTH_TOKEN"),
        help="bearer token; prefer $CNNSERVE_AUTH_TOKEN (command lines are visible to other users)",
    )
    return parser


def _run(command: str) -> Callable[[argparse.Namespace], int]:
    """A runner that imports the client only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        from cnnserve.client import _commands

        return int(getattr(_commands, command)(args))

    return run


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
