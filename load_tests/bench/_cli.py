"""`cnnserve bench`: argument parsing only; the benchmark is imported when the command runs.

Every flag defaults to None and is named (or `dest`-ed) like its BenchSettings field, so that only flags actually
given override the chosen preset (default or --quick).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "bench",
        help="measure the server against bare ONNX Runtime on this machine",
        description="For each model: bare ONNX Runtime at each batch size (the limit), then a server with "
        "batching off and one with batching on over a sweep of concurrent callers, then the server saturated "
        "with many-image requests (in the message and in shared memory) and in its throughput configuration. "
        "Writes results.json, results.md, throughput.png, latency.png and saturation.png, and checks the "
        "performance targets. The default run takes a few minutes; --quick well under one.",
    )
    parser.add_argument("--quick", action="store_true", help="mnist_net only, 3 concurrencies, short windows")
    parser.add_argument("--models", type=_names, help="comma-separated (default: mnist_net,catsdogs)")
    parser.add_argument(
        "--model-repository",
        type=Path,
        help="take models from here when present; others are exported with random weights",
    )
    parser.add_argument("--cache-dir", type=Path, help="random-weight exports (default: load_tests/results/models)")
    parser.add_argument("--output", type=Path, dest="output_dir", help="default: load_tests/results/bench")
    parser.add_argument("--concurrency", type=_ints, help="callers per point, e.g. 1,4,16,64,256")
    parser.add_argument("--batch-sizes", type=_ints, help="bare ONNX Runtime batch sizes, e.g. 1,8,32,128")
    parser.add_argument("--warmup", type=float, dest="warmup_seconds", help="seconds before each point")
    parser.add_argument("--duration", type=float, dest="duration_seconds", help="measured seconds per point")
    parser.add_argument(
        "--baseline-seconds", type=float, dest="baseline_seconds", help="seconds per bare ONNX Runtime batch size"
    )
    parser.add_argument("--processes", type=int, help="load-generator processes (default: CPUs, at least 2)")
    parser.add_argument("--payload", choices=["float32", "uint8", "png", "jpeg"], help="default float32")
    parser.add_argument("--images-per-request", type=int, help="default 1")
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads for baseline and servers")
    parser.add_argument("--server-flags", type=shlex.split, help="extra `cnnserve serve` flags for both servers")
    parser.add_argument(
        "--batching-on-flags", type=shlex.split, help='flags of the batching server, e.g. "--max-queue-delay-ms 1"'
    )
    parser.add_argument(
        "--batching-off-flags", type=shlex.split, help='flags of the other server (default "--max-batch-size 1")'
    )
    parser.add_argument(
        "--bulk-images", type=int, help="images per ModelInfer call of the saturation points (default 32; 0: none)"
    )
    parser.add_argument("--bulk-callers", type=int, help="callers of the saturation points (default 4)")
    parser.add_argument(
        "--no-throughput-configuration",
        action="store_false",
        dest="throughput_configuration",
        default=None,
        help="skip the server with one single-threaded instance per core (and bare ONNX Runtime the same way)",
    )
    parser.add_argument("--timeout", type=float, dest="timeout_seconds", help="seconds per call (default 30)")
    parser.add_argument("--no-plots", action="store_false", dest="plots", default=None, help="skip the PNG plots")
    parser.add_argument(
        "--h2load-frontends",
        help="instead: drive mnist_net's ModelInfer with h2load (a C load generator) against cnnserve with each of "
        "these front-end counts (0: one process) and a bare grpc.aio server with as many processes, e.g. 0,1,2; "
        "writes h2load.json and h2load.png to --output (python -m load_tests.bench.h2load_compare has every option)",
    )
    parser.add_argument(
        "--h2load-rounds",
        type=int,
        default=1,
        help="with --h2load-frontends: run the sweep this many times, alternating its order, and report medians",
    )
    parser.add_argument("--check-targets", action="store_true", help="exit 1 when a measured target is not met")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.h2load_frontends is not None:
        return _run_h2load(args)
    from pydantic import ValidationError

    from load_tests.bench.progress import Progress
    from load_tests.bench.report import write_reports
    from load_tests.bench.runner import run_benchmark
    from load_tests.bench.settings import BenchSettings, bench_settings

    try:
        given = {name: getattr(args, name, None) for name in BenchSettings.model_fields}
        settings = bench_settings(quick=args.quick, **given)
    except ValidationError as exc:
        print(f"cnnserve bench: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    progress = Progress(settings.estimated_seconds(), enabled=not args.quiet)
    progress.note(f"benchmarking {', '.join(settings.models)}; planned about {settings.estimated_seconds():.0f} s")
    result = run_benchmark(settings, progress, command=_command(args))
    written = write_reports(result, settings.output_dir, plots=settings.plots)
    for check in result.targets:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[check.passed]
        print(f"{check.model}: {check.name}: {check.measured} (required {check.required}): {verdict}")
    print(f"took {result.elapsed_seconds:.0f} s; wrote {', '.join(str(p) for p in written)}")
    if args.check_targets and any(check.passed is False for check in result.targets):
        return 1
    return 0


def _run_h2load(args: argparse.Namespace) -> int:
    from load_tests.bench import h2load_compare

    output = args.output_dir or Path("load_tests/results/bench")
    output.mkdir(parents=True, exist_ok=True)
    argv = ["--frontends", args.h2load_frontends, "--json", str(output / "h2load.json")]
    argv += ["--plot", str(output / "h2load.png"), "--rounds", str(args.h2load_rounds)]
    if args.duration_seconds is not None:
        argv += ["--duration", str(args.duration_seconds)]
    if args.model_repository is not None:
        argv += ["--model-repository", str(args.model_repository)]
    if args.cache_dir is not None:
        argv += ["--cache-dir", str(args.cache_dir)]
    return h2load_compare.main(argv)


def _command(args: argparse.Namespace) -> str:
    """The command as typed, for the report (python -m load_tests.bench passes its arguments straight through)."""
    given = sys.argv[sys.argv.index("bench") + 1 :] if "bench" in sys.argv else sys.argv[1:]
    return shlex.join(["cnnserve", "bench", *given])
