"""Do explanations delay classifications? Classify at many callers, alone and with explanations running beside.

    python -m load_tests.bench.explain_beside [--model mnist_net] [--callers 64] [--duration 8] [--rounds 2]
        [--explainers 1] [--masks 500] [--model-repository R] [--json PATH] [--plot PATH]

One server, one run: each round measures single-image Classify calls from `--callers` closed-loop callers (the
process-spread Python load generator) for `--duration` seconds twice, once alone and once while `--explainers`
threads of this process send RISE explanations (`--masks` masks each) of the same model back to back; the order
alternates between rounds, so drift on the machine does not favour either. Explanations' rows go to the
batcher's background lane (server/batcher.py), so classification latency should hardly move: the issue's target
is a p99 less than 10% higher.

Prints per round and overall (medians over rounds) p50, p99 and calls/s of the classifications, and the
explanations finished and their forward passes per second; `--json` writes every figure, `--plot` a PNG of p50
and p99 with and without explanations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from load_tests.bench.loadgen import LoadGenerator, LoadPlan
from load_tests.bench.models import prepare_model, single_model_repository
from load_tests.bench.payloads import ModelInput, PayloadKind, classify_request, synthetic_photo
from load_tests.bench.server import ServerUnderTest, running_server

CLASSIFY = "/cnnserve.v1.ImageClassifier/Classify"
WARM_UP_SECONDS = 1.0
START_DELAY_SECONDS = 0.5


@dataclass(frozen=True)
class Point:
    """Classifications measured over one window, with or without explanations beside them."""

    explaining: bool
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    explanations: int
    explanation_rows_per_second: float


class Explainers:
    """Threads sending RISE explanations back to back until stopped; counts what finished."""

    def __init__(self, server: ServerUnderTest, model: str, image: object, threads: int, masks: int) -> None:
        from cnnserve.v1 import classifier_pb2 as pb
        from cnnserve.v1 import classifier_pb2_grpc as pb_grpc

        self._channel = grpc.insecure_channel(server.target)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)
        self._request = pb.ExplainRequest(model=model, image=image, method=pb.RISE, rise=pb.RiseOptions(masks=masks))
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        self.finished = 0
        self.rows = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._stub.Explain(self._request, timeout=120)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.05)
                continue
            with self._lock:
                self.finished += 1
                self.rows += response.rows

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.finished, self.rows

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)
        self._channel.close()


def measure(
    server: ServerUnderTest,
    generator: LoadGenerator,
    request: bytes,
    callers: int,
    duration: float,
    explainers: Explainers | None,
) -> Point:
    start_at = time.monotonic() + START_DELAY_SECONDS
    window_start = start_at + WARM_UP_SECONDS
    window_end = window_start + duration
    plan = LoadPlan(server.target, CLASSIFY, request, start_at, window_start, window_end)
    running = generator.start(plan, callers)
    time.sleep(max(0.0, window_start - time.monotonic()))
    before = explainers.counts() if explainers is not None else (0, 0)
    time.sleep(max(0.0, window_end - time.monotonic()))
    after = explainers.counts() if explainers is not None else (0, 0)
    result = running.wait()
    latencies = np.sort(result.latencies) * 1000
    return Point(
        explaining=explainers is not None,
        calls_per_second=len(latencies) / duration,
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        errors=sum(result.errors.values()),
        explanations=after[0] - before[0],
        explanation_rows_per_second=(after[1] - before[1]) / duration,
    )


def run(args: argparse.Namespace) -> list[list[Point]]:
    from cnnserve.v1 import classifier_pb2 as pb

    with tempfile.TemporaryDirectory(prefix="cnnserve-explain-beside-") as scratch:
        work = Path(scratch)
        prepared = prepare_model(args.model, work / "cache", args.model_repository)
        repository = single_model_repository(prepared, work / "repository")
        with running_server(repository, [], work / "server.log") as server:
            model_input = ModelInput.from_model_info(server.model_info(args.model))
            request = classify_request(args.model, model_input, PayloadKind.PNG).SerializeToString()
            picture = synthetic_photo(model_input, seed=7)
            image = pb.Image(tensor=pb.Tensor(dtype=pb.UINT8, shape=picture.shape, data=picture.tobytes()))
            rounds: list[list[Point]] = []
            with LoadGenerator(args.load_processes) as generator:
                for index in range(args.rounds):
                    points = []
                    for explaining in (False, True) if index % 2 == 0 else (True, False):
                        explainers = None
                        if explaining:
                            explainers = Explainers(server, args.model, image, args.explainers, args.masks)
                            explainers.start()
                        try:
                            point = measure(server, generator, request, args.callers, args.duration, explainers)
                        finally:
                            if explainers is not None:
                                explainers.stop()
                        if explainers is not None and explainers.failures:
                            print(f"  explanations failed: {explainers.failures[:3]}")
                        print(_line(index, point), flush=True)
                        points.append(point)
                        server.wait_idle(args.model)
                    rounds.append(sorted(points, key=lambda p: p.explaining))
    return rounds


def _line(index: int, point: Point) -> str:
    beside = "with explanations" if point.explaining else "alone            "
    extra = (
        f", {point.explanations} explanations ({point.explanation_rows_per_second:,.0f} rows/s)"
        if point.explaining
        else ""
    )
    return (
        f"round {index} {beside}: {point.calls_per_second:,.0f} calls/s, p50 {point.p50_ms:.2f} ms, "
        f"p99 {point.p99_ms:.2f} ms, {point.errors} errors{extra}"
    )


def summary(rounds: list[list[Point]]) -> dict[str, float]:
    alone = [points[0] for points in rounds]
    beside = [points[1] for points in rounds]

    def median(points: list[Point], field: str) -> float:
        return statistics.median(getattr(point, field) for point in points)

    figures = {
        f"{name}_{field}": median(points, field)
        for name, points in (("alone", alone), ("with_explanations", beside))
        for field in ("calls_per_second", "p50_ms", "p99_ms")
    }
    figures["p99_ratio"] = statistics.median(b.p99_ms / a.p99_ms for a, b in zip(alone, beside, strict=True))
    figures["explanation_rows_per_second"] = median(beside, "explanation_rows_per_second")
    return figures


def plot(figures: dict[str, float], path: Path, title: str) -> None:
    from load_tests.bench.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    positions = np.arange(2)
    for offset, (name, label, colour) in enumerate(
        (("alone", "classifications alone", "tab:blue"), ("with_explanations", "with explanations", "tab:orange"))
    ):
        values = [figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"]]
        ax.bar(positions + (offset - 0.5) * 0.38, values, 0.38, label=label, color=colour)
    ax.set_xticks(positions, ["p50", "p99"])
    ax.set_ylabel("Classify latency (ms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist_net")
    parser.add_argument("--model-repository", type=Path, help="take the model from here (default: export one)")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--explainers", type=int, default=1, help="threads sending explanations back to back")
    parser.add_argument("--masks", type=int, default=500, help="RISE masks per explanation")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    rounds = run(args)
    figures = summary(rounds)
    print(
        f"\nmedians over {len(rounds)} rounds, {args.callers} callers of {args.model}: p99 "
        f"{figures['alone_p99_ms']:.2f} ms alone, {figures['with_explanations_p99_ms']:.2f} ms with explanations "
        f"(ratio {figures['p99_ratio']:.3f}); calls/s {figures['alone_calls_per_second']:,.0f} and "
        f"{figures['with_explanations_calls_per_second']:,.0f}; explanations ran "
        f"{figures['explanation_rows_per_second']:,.0f} rows/s beside"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"figures": figures, "rounds": [[asdict(p) for p in r] for r in rounds]}, indent=2)
        )
    if args.plot is not None:
        plot(figures, args.plot, f"{args.model}, {args.callers} callers: Classify with RISE explanations beside")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
