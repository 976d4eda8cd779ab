"""Run the Locust load test headless against a server this script starts on loopback (`make load-test`).

    python load_tests/run_locust.py --model mnist_net --users 32 --run-time 60 --output load_tests/results/locust

Serves the model alone (from --model-repository, or exported with random weights into the benchmark's cache),
runs load_tests/locustfile.py for --run-time seconds with users stepping up to --users, writes Locust's CSV
files (<output>/locust_stats.csv, ..._stats_history.csv, ..._failures.csv), its HTML report (<output>/locust.html)
and the server's log, stops the server, and exits with Locust's exit code (1 when any call failed).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cnnserve.server.launcher import running_server
from load_tests.bench.models import add_model_options, model_from_options, single_model_repository

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_net", help="default mnist_net")
    add_model_options(parser, "--model")
    parser.add_argument("--users", type=int, default=32, help="peak users (default 32)")
    parser.add_argument("--steps", type=int, default=4, help="user ramp steps; 0 for constant load (default 4)")
    parser.add_argument("--run-time", type=int, default=60, help="seconds (default 60)")
    parser.add_argument("--payloads", default="png,jpeg,uint8,float32")
    parser.add_argument("--output", type=Path, default=Path("load_tests/results/locust"))
    parser.add_argument("--server-flags", type=shlex.split, default=[], help="extra `cnnserve serve` flags")
    parser.add_argument("--locust-args", type=shlex.split, default=[], help="extra locust arguments")
    return parser.parse_args(argv)


def locust_command(args: argparse.Namespace, target: str) -> list[str]:
    output: Path = args.output
    return [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        target,
        "--users",
        str(args.users),
        "--run-time",
        f"{args.run_time}s",
        "--csv",
        str(output / "locust"),
        "--html",
        str(output / "locust.html"),
        "--only-summary",
        "--model",
        args.model,
        "--payloads",
        args.payloads,
        "--steps",
        str(args.steps),
        *args.locust_args,
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    model = model_from_options(args.model, args)
    with tempfile.TemporaryDirectory(prefix="cnnserve-locust-") as scratch:
        repository = single_model_repository(model, Path(scratch))
        with running_server(repository, *args.server_flags, log_path=args.output / "server.log") as server:
            print(f"serving {args.model} ({model.weights} weights) on {server.target}", flush=True)
            completed = subprocess.run(locust_command(args, server.target), check=False)
    print(f"reports: {args.output / 'locust_stats.csv'}, {args.output / 'locust.html'}")
    return completed.returncode


if __name__ == "__main__":
    raise SystemExit(main())
