"""cnnserve against a bare grpc.aio server, side by side, under h2load (a C load generator).

    python -m load_tests.bench.h2load_compare [--model-repository R] [--duration 10] [--in-flight 64]

One run measures, one after the other on the same machine: a single `cnnserve serve` process answering
mnist_net's single-image ModelInfer, and load_tests.bench.bare_grpc answering the same calls with a fixed
response; it prints both requests/s (from each server's own success count) and their ratio. Exits 2, saying
`apt-get install nghttp2-client`, when h2load is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cnnserve.server import launcher
from load_tests.bench import h2load
from load_tests.bench.models import prepare_model, single_model_repository

MODEL = "mnist_net"


@dataclass(frozen=True)
class Comparison:
    in_flight: int
    seconds: float
    cnnserve: h2load.Measurement
    bare: h2load.Measurement

    @property
    def ratio(self) -> float:
        """cnnserve's requests/s over the bare server's."""
        return self.cnnserve.requests_per_second / self.bare.requests_per_second

    def to_dict(self) -> dict:
        sides = {
            name: {**asdict(side), "requests_per_second": side.requests_per_second}
            for name, side in (("cnnserve", self.cnnserve), ("bare_grpc_aio", self.bare))
        }
        return {"in_flight": self.in_flight, "seconds": self.seconds, **sides, "ratio": self.ratio}


@contextmanager
def running_bare_server(log_path: Path, ready_timeout: float = 30.0) -> Iterator[str]:
    """Start load_tests.bench.bare_grpc as its own process, yield its loopback target, then stop it."""
    with tempfile.TemporaryDirectory(prefix="cnnserve-bare-") as scratch:
        port_file = Path(scratch) / "ports.json"
        command = [sys.executable, "-m", "load_tests.bench.bare_grpc", "--port-file", str(port_file)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + ready_timeout
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the bare server did not start; its log:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            yield f"{launcher.LOOPBACK}:{json.loads(port_file.read_text())['grpc_port']}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def compare(repository: Path, workdir: Path, seconds: float, in_flight: int, connections: int = 4) -> Comparison:
    """Measure cnnserve (one process, default settings) and then the bare server, each for `seconds` after a
    one-second warm-up at the same load. Raises h2load.H2loadMissing, launcher.ServerStartError, RuntimeError."""
    h2load.h2load_executable()
    with launcher.running_server(repository, log_path=workdir / "cnnserve.log") as server:
        body = h2load.infer_body(MODEL, h2load.input_name(server.target, MODEL))
        h2load.measure(server.target, MODEL, body, 1.0, in_flight, connections)
        ours = h2load.measure(server.target, MODEL, body, seconds, in_flight, connections)
    with running_bare_server(workdir / "bare_grpc.log") as target:
        h2load.measure(target, MODEL, body, 1.0, in_flight, connections)
        bare = h2load.measure(target, MODEL, body, seconds, in_flight, connections)
    return Comparison(in_flight, seconds, ours, bare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench.h2load_compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-repository", type=Path, help=f"holding {MODEL} (else exported with random weights)")
    parser.add_argument("--cache-dir", type=Path, default=Path("load_tests/results/models"))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per server (default 10)")
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections (default 4)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        h2load.h2load_executable()
    except h2load.H2loadMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    model = prepare_model(MODEL, args.cache_dir, args.model_repository)
    with tempfile.TemporaryDirectory(prefix="cnnserve-h2load-compare-") as scratch:
        workdir = Path(scratch)
        repository = single_model_repository(model, workdir / "repository")
        result = compare(repository, workdir, args.duration, args.in_flight, args.connections)
    for name, side in (("cnnserve (1 process)", result.cnnserve), ("bare grpc.aio", result.bare)):
        print(
            f"{name:<22} {side.requests_per_second:9.0f} requests/s  "
            f"(server successes {side.server_successes}, h2load succeeded {side.h2load.succeeded}, "
            f"failed {side.h2load.failed}, {side.h2load.seconds:.2f} s)"
        )
    print(f"ratio cnnserve / bare: {result.ratio:.2f}  ({result.in_flight} in flight, {MODEL} single image)")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
