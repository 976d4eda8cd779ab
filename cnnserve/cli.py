"""The `cnnserve` command: one program, one subcommand per role.

Each role registers its own subcommands from a light `_cli` module, so `cnnserve classify` never imports
onnxruntime and `cnnserve serve` never imports torch. Logging is configured here, never on import.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cnnserve import __version__
from cnnserve.client import _cli as client_cli
from cnnserve.export import _cli as export_cli
from cnnserve.server import _cli as server_cli


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
