"""The `cnnserve` command: one program, one subcommand per role.

Each role registers its own subcommands from a light `_cli` module, so `cnnserve classify` never imports
onnxruntime and `cnnserve serve` never imports torch. Logging is configured here, never on import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cnnserve import __version__
from cnnserve._logging import configure_logging
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
    _register_bench(subcommands)
    return parser


def _register_bench(subcommands: argparse._SubParsersAction) -> None:
    """`cnnserve bench` where the source checkout's `load_tests` is importable (`make` arranges that).

    The benchmark is a tool of the checkout, not of the installed distribution, so an installed server (its
    container image included) does not carry it; there the subcommand says where to find it.
    """
    try:
        from load_tests.bench import _cli as bench_cli
    except ImportError:
        parser = subcommands.add_parser("bench", help="the benchmark (needs the source checkout)")
        parser.set_defaults(run=_bench_unavailable)
        return
    bench_cli.register(subcommands)


def _bench_unavailable(args: argparse.Namespace) -> int:
    print(
        "cnnserve bench: the benchmark lives in the source checkout (load_tests/bench); run `make bench` there, "
        "or `python -m load_tests.bench` from the checkout's root",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Every command honours CNNSERVE_LOG_FORMAT; `serve` resolves it like its other settings (flag, variable, file).
    log_format = server_cli.log_format(args)
    try:
        configure_logging(args.log_level, log_format.lower())
    except ValueError as exc:
        parser.error(f"--log-format, CNNSERVE_LOG_FORMAT or the config file's log_format: {exc}")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
