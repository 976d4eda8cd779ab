"""Memory of a server that reloads a model over and over: each process's RSS every quarter of the cycles.

    python -m load_tests.bench.reload_memory --cycles 600
    python -m load_tests.bench.reload_memory --cycles 600 --way poll --frontends 2

A model repository that changes (new versions rolled out by copying files, or a controller that loads and unloads
models) must not make the server grow. This serves a copy of mnist_net and, `--cycles` times, either unloads and
loads it over the Open Inference Protocol (`--way rpc`) or touches its file so that the repository poll reloads
it (`--way poll`), reading the resident memory of every process of the server (the soak's reader: supervisor,
engine, front-ends) before the first cycle and after each quarter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

from cnnserve.server import launcher
from load_tests.bench import h2load
from load_tests.bench.h2load_compare import MODEL
from load_tests.bench.models import add_model_options, model_from_options
from load_tests.soak import MiB, server_memory

RELOADED = "reloaded"
"""The name the copy of the model is served under (its files are touched, so it is never the original)."""
_POLL_SECONDS = 0.05
_READY = f"model {RELOADED} version 1 ready"


def cycle_over_rpc(channel: grpc.Channel) -> None:
    from cnnserve.inference import grpc_service_pb2 as messages  # here, as in h2load: tritonclient's clash

    stub = h2load.inference_stub(channel)
    stub.RepositoryModelUnload(messages.RepositoryModelUnloadRequest(model_name=RELOADED), timeout=60)
    stub.RepositoryModelLoad(messages.RepositoryModelLoadRequest(model_name=RELOADED), timeout=60)


def cycle_by_poll(model_file: Path, log_path: Path, loads_before: int) -> None:
    """Move the model file's modification time on and wait for the poll's reload to say it is ready."""
    modified = model_file.stat().st_mtime_ns + 10**9
    os.utime(model_file, ns=(modified, modified))
    give_up = time.monotonic() + 60
    while log_path.read_text(errors="replace").count(_READY) <= loads_before:
        if time.monotonic() > give_up:
            raise RuntimeError(f"the poll did not reload {RELOADED} within 60 s; see {log_path}")
        time.sleep(_POLL_SECONDS)


def run(repository: Path, workdir: Path, way: str, cycles: int, flags: list[str]) -> list[dict[str, object]]:
    """Per reading: the cycles done so far and each process's RSS in MiB."""
    log_path = workdir / "cnnserve.log"
    serve_flags = ["--allow-repository-changes", *flags]
    if way == "poll":
        serve_flags += ["--repository-poll-seconds", str(_POLL_SECONDS)]
    model_file = repository / RELOADED / "1" / "model.onnx"
    readings = []
    with (
        launcher.running_server(repository, *serve_flags, log_path=log_path) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        memory = server_memory(server.pid, log_path)

        def read(done: int) -> None:
            rss = {name: round(value / MiB, 1) for name, value in sorted(memory().items())}
            readings.append({"cycles": done, "rss_mib": rss})
            print(f"{done:6d} cycles: " + ", ".join(f"{name} {value} MiB" for name, value in rss.items()), flush=True)

        read(0)
        for done in range(1, cycles + 1):
            if way == "rpc":
                cycle_over_rpc(channel)
            else:
                cycle_by_poll(model_file, log_path, log_path.read_text(errors="replace").count(_READY))
            if done % max(1, cycles // 4) == 0 or done == cycles:
                read(done)
    return readings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench.reload_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=600, help="reloads (default 600)")
    parser.add_argument("--way", choices=("rpc", "poll"), default="rpc", help="unload+load over gRPC, or the poll")
    parser.add_argument("--frontends", type=int, default=0, help="front-end processes, 0 for one process (default)")
    parser.add_argument("--serve-flag", action="append", default=[], help="extra `cnnserve serve` flag (repeatable)")
    add_model_options(parser, MODEL)
    parser.add_argument("--json", type=Path, help="also write the readings here")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.frontends < 0:
        parser.error("--cycles must be at least 1 and --frontends at least 0")
    model = model_from_options(MODEL, args)
    with tempfile.TemporaryDirectory(prefix="cnnserve-reload-memory-") as scratch:
        workdir = Path(scratch)
        repository = workdir / "repository"
        shutil.copytree(model.model_path.parent.parent, repository / RELOADED)
        flags = ["--frontends", str(args.frontends), *args.serve_flag]
        try:
            readings = run(repository, workdir, args.way, args.cycles, flags)
        except (launcher.ServerStartError, RuntimeError) as exc:
            print(exc, file=sys.stderr)
            return 1
    first, last = readings[0]["rss_mib"], readings[-1]["rss_mib"]
    growth = {name: round(last[name] - first[name], 1) for name in last if name in first}
    print(f"growth over {args.cycles} cycles ({args.way}): " + ", ".join(f"{n} {g:+} MiB" for n, g in growth.items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"way": args.way, "readings": readings, "growth_mib": growth}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
