"""The `cnnserve` command: one program, one subcommand per role.

Each role registers its own subcommands from a light `_cli` module, so `cnnserve classify` never imports
onnxruntime and `cnnserve serve` never imports torch. Logging is configured here, never on import.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from cnnserve import __version__
from cnnserve.bench import _cli as bench_cli
from cnnserve.client import _cli as client_cli
from cnnserve.export import _cli as export_cli
from cnnserve.server import _cli as server_cli
from cnnserve.server.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnserve", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cnnserve {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO"
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_cli.register(subcommands)
    export_cli.register(subcommands)
    client_cli.register(subcommands)
    bench_cli.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # `serve --log-format` (a server setting) wins over CNNSERVE_LOG_FORMAT, which every command honours.
    log_format = getattr(args, "log_format", None) or os.environ.get("CNNSERVE_LOG_FORMAT") or "text"
    try:
        configure_logging(args.log_level, str(log_format).lower())
    except ValueError as exc:
        parser.error(f"CNNSERVE_LOG_FORMAT: {exc}")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
