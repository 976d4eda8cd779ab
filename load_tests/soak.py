"""Soak test: constant load on a cnnserve server for a long time, watching throughput, errors and memory.

    python load_tests/soak.py --model-repository models --duration 600 --rate 100
    python load_tests/soak.py --server 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics --duration 3600

Without --server it starts `cnnserve serve` on loopback from --model-repository (which must hold `xo` and
`mnist_net`, as `make run` leaves them in ./models), with any --serve-flag (`--serve-flag=--frontends
--serve-flag=2` soaks a multi-process server), and reads the RSS of each of its processes from /proc: the
supervisor, the engine and every front-end of a multi-process server, named from the server's log, so that a leak
in any one of them shows. With --server it reads `process_resident_memory_bytes` from --metrics-url. Requests go
out open-loop at --rate per second (X/O and digit PNGs, digit tensors, requests of 1 to 4 images, and a
--bad-fraction of undecodable images), each with a --timeout deadline, whatever the server's pace, over
--connections HTTP/2 connections (a multi-process server's front-ends share the port, and each connection lands
on one of them); at most --max-in-flight are outstanding. A --cancel-fraction of them the caller cancels after a
random 0-10 ms, mostly while the server works on them: cancellation is a path of its own through every process.

Every answer is checked against the answer the server gave the same payload at the start, so a wrong or
half-answered response is counted, not just a failed one. Each second records the answers by outcome, their
latencies and the RSS. At the end (or on Ctrl-C) it writes <out>/soak-<time>.json and .png and prints a
summary: throughput, errors by status, requests lost (sent but never answered: must be 0), wrong answers (must
be 0) and memory growth after the warm-up. Not part of the test suite: it runs for minutes to hours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from cnnserve.server.launcher import running_server
from cnnserve.v1 import classifier_pb2 as pb
from cnnserve.v1 import classifier_pb2_grpc as pb_grpc
from load_tests.bench._cpu import descendants

OK = "ok"
WRONG = "wrong_answer"
EXPECTED_ERROR = "refused_bad_input"
CANCELLED = "cancelled_by_caller"
SKIPPED = "not_sent_client_saturated"
GOOD_OUTCOMES = (OK, EXPECTED_ERROR, CANCELLED)
MiB = 2**20
CANCEL_WITHIN_SECONDS = 0.01
"""A cancelled call is cancelled after a uniformly random delay up to this: about one call's time in the server."""
SERVER = "server"
"""The name of a server's memory where its processes cannot be told apart (a server given by --server)."""
_STARTED = re.compile(r"supervisor: (engine|front-end \d+) started \(pid (\d+)\)")

Memory = Callable[[], dict[str, int]]
"""Reads the resident bytes of each process of the server under soak, by name ("supervisor", "engine",
"front-end 0 (pid 123)", ...); empty when it cannot."""


@dataclass(frozen=True)
class SoakSettings:
    duration: float
    rate: float
    timeout: float
    max_in_flight: int
    bad_fraction: float
    cancel_fraction: float
    connections: int
    warm_up: float
    out: Path
    seed: int


@dataclass(frozen=True)
class Payload:
    """A request and what it must get: the labels the server gave it at the start, or INVALID_ARGUMENT."""

    request: pb.ClassifyRequest
    labels: tuple[str, ...] | None


@dataclass
class Second:
    """What happened in one second of the run."""

    at: float
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rss_by_process: dict[str, int] = field(default_factory=dict)

    @property
    def rss_bytes(self) -> int | None:
        """The whole server's: the sum over its processes."""
        return sum(self.rss_by_process.values()) if self.rss_by_process else None


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def build_payloads(stub: pb_grpc.ImageClassifierStub, seed: int) -> tuple[list[Payload], list[Payload]]:
    """Good payloads with their reference answers, and bad ones; the references come from the server itself."""
    from cnnserve.export import get_spec, load_digit_images, render_o, render_x
    from cnnserve.preprocessing import to_model_input

    rng = np.random.default_rng(seed)
    digits, _ = load_digit_images()
    picks = rng.choice(len(digits), 64, replace=False)
    xo = [pb.Image(encoded=png(render_x())), pb.Image(encoded=png(render_o()))]
    digit_pngs = [pb.Image(encoded=png(digits[i])) for i in picks]
    scaled = to_model_input(digits[picks], get_spec("mnist_net").preprocessing)
    digit_tensors = [
        pb.Image(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=row.astype("<f4").tobytes()))
        for row in scaled
    ]
    requests = [pb.ClassifyRequest(model="xo", images=[image]) for image in xo]
    requests.append(pb.ClassifyRequest(model="xo", images=[xo[0], xo[1], xo[1]], top_k=2))
    for start in range(0, 64, 4):
        requests.append(pb.ClassifyRequest(model="mnist_net", images=[digit_pngs[start]], top_k=3))
        requests.append(pb.ClassifyRequest(model="mnist_net", images=digit_pngs[start : start + 4]))
        requests.append(pb.ClassifyRequest(model="mnist_net", images=[digit_tensors[start + 1]]))
    good = []
    for request in requests:
        answer = stub.Classify(request, timeout=30)
        good.append(Payload(request, answer_labels(answer)))
    bad_bytes = [bytes(rng.integers(0, 256, size, np.uint8)) for size in (10, 500, 5000)]
    bad = [Payload(pb.ClassifyRequest(model="mnist_net", images=[pb.Image(encoded=b)]), None) for b in bad_bytes]
    return good, bad


def answer_labels(answer: pb.ClassifyResponse) -> tuple[str, ...]:
    return tuple(entry.label for result in answer.results for entry in result.top)


async def send(stub: pb_grpc.ImageClassifierStub, payload: Payload, timeout: float) -> str:
    """One call; its outcome: OK, a wrong answer, bad input refused as it should be, or the status's name."""
    try:
        answer = await stub.Classify(payload.request, timeout=timeout)
    except grpc.aio.AioRpcError as failure:
        if payload.labels is None and failure.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return EXPECTED_ERROR
        return failure.code().name
    if payload.labels is None:
        return "unexpected_success"
    return OK if answer_labels(answer) == payload.labels else WRONG


class Recorder:
    """Per-second outcome counts and latencies, keyed by whole seconds since the start."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.seconds: dict[int, Second] = {}
        self.sent = 0
        self.answered = 0

    def second(self, now: float) -> Second:
        index = int(now - self.started)
        return self.seconds.setdefault(index, Second(at=float(index)))

    def record(self, outcome: str, latency: float) -> None:
        now = time.monotonic()
        entry = self.second(now)
        entry.outcomes[outcome] += 1
        if outcome != SKIPPED:
            self.answered += 1
            entry.latencies.append(latency)


async def run_load(
    stubs: list[pb_grpc.ImageClassifierStub],
    good: list[Payload],
    bad: list[Payload],
    settings: SoakSettings,
    memory: Memory,
    stop: asyncio.Event,
) -> Recorder:
    """Send at a constant rate, one connection after another, until the duration is over or `stop` is set, then
    wait for every answer."""
    rng = np.random.default_rng(settings.seed)
    started = time.monotonic()
    recorder = Recorder(started)
    in_flight: set[asyncio.Task[None]] = set()

    async def call(stub: pb_grpc.ImageClassifierStub, payload: Payload, cancel_after: float | None) -> None:
        sent = time.monotonic()
        try:
            outcome = await asyncio.wait_for(send(stub, payload, settings.timeout), cancel_after)
        except TimeoutError:
            outcome = CANCELLED
        recorder.record(outcome, time.monotonic() - sent)

    async def sample_memory() -> None:
        while True:
            recorder.second(time.monotonic()).rss_by_process = memory()
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_memory())
    interval = 1.0 / settings.rate
    next_send = started
    end = started + settings.duration
    while not stop.is_set() and (now := time.monotonic()) < end:
        while next_send <= now:
            next_send += interval
            if len(in_flight) >= settings.max_in_flight:
                recorder.record(SKIPPED, 0.0)
                continue
            payloads = bad if rng.random() < settings.bad_fraction else good
            cancel_after = rng.uniform(0, CANCEL_WITHIN_SECONDS) if rng.random() < settings.cancel_fraction else None
            stub = stubs[recorder.sent % len(stubs)]
            task = asyncio.create_task(call(stub, payloads[rng.integers(len(payloads))], cancel_after))
            recorder.sent += 1
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(next_send - time.monotonic(), 0.0))
    if in_flight:
        await asyncio.wait(in_flight, timeout=settings.timeout + 5)
    recorder.second(time.monotonic()).rss_by_process = memory()
    sampler.cancel()
    return recorder


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(recorder: Recorder, settings: SoakSettings) -> dict[str, object]:
    seconds = [recorder.seconds[k] for k in sorted(recorder.seconds)]
    totals: Counter[str] = Counter()
    for entry in seconds:
        totals.update(entry.outcomes)
    latencies = [latency for entry in seconds for latency in entry.latencies]
    elapsed = max(len(seconds) - 1, 1)
    memory = memory_growth([(entry.at, entry.rss_bytes) for entry in seconds], settings.warm_up)
    names = sorted({name for entry in seconds for name in entry.rss_by_process})
    by_process = {
        name: memory_growth([(entry.at, entry.rss_by_process.get(name)) for entry in seconds], settings.warm_up)
        for name in names
    }
    answered = recorder.answered
    errors = {name: count for name, count in totals.items() if name not in (*GOOD_OUTCOMES, SKIPPED)}
    return {
        "seconds": elapsed,
        "offered_rate": settings.rate,
        "sent": recorder.sent,
        "answered": answered,
        "lost": recorder.sent - answered,
        "not_sent_client_saturated": totals[SKIPPED],
        "ok": totals[OK],
        "wrong_answers": totals[WRONG],
        "bad_input_refused": totals[EXPECTED_ERROR],
        "cancelled_by_caller": totals[CANCELLED],
        "errors": errors,
        "throughput_per_second": round(answered / elapsed, 1),
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "latency_max_ms": _ms(max(latencies) if latencies else None),
        **memory,
        "memory_by_process": by_process if len(by_process) > 1 else {},
    }


def memory_growth(points: list[tuple[float, int | None]], warm_up: float) -> dict[str, float]:
    """RSS at the start, after `warm_up` seconds, at the end and at its peak (MiB), the growth after the warm-up
    and the second half's trend (MiB an hour), from (second, bytes) readings; {} without any."""
    readings = [(at, value) for at, value in points if value is not None]
    if not readings:
        return {}
    times = np.array([at for at, _ in readings])
    values = np.array([value for _, value in readings], dtype=np.float64) / MiB
    settled = values[times >= warm_up] if (times >= warm_up).any() else values
    later = times >= times[-1] / 2
    slope = np.polyfit(times[later], values[later], 1)[0] * 3600 if later.sum() >= 3 else math.nan
    return {
        "rss_start_mib": round(float(values[0]), 1),
        "rss_after_warm_up_mib": round(float(settled[0]), 1),
        "rss_end_mib": round(float(values[-1]), 1),
        "rss_peak_mib": round(float(values.max()), 1),
        "growth_after_warm_up_mib": round(float(values[-1] - settled[0]), 1),
        "second_half_slope_mib_per_hour": round(float(slope), 1),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def plot(recorder: Recorder, summary: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [recorder.seconds[k] for k in sorted(recorder.seconds)][:-1]
    minutes = np.array([entry.at / 60 for entry in seconds])
    window = 10 if len(seconds) > 120 else 1
    figure, (throughput, errors, latency, memory) = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    answered = [sum(n for o, n in entry.outcomes.items() if o != SKIPPED) for entry in seconds]
    ok = [entry.outcomes[OK] for entry in seconds]
    throughput.plot(minutes, smoothed(answered, window), color="tab:blue", linewidth=0.8, label="answered / s")
    throughput.plot(minutes, smoothed(ok, window), color="tab:green", linewidth=0.8, label="correct / s")
    throughput.axhline(float(summary["offered_rate"]), color="grey", linestyle="--", linewidth=0.8, label="offered")
    throughput.set_ylabel(f"requests / s ({window} s mean)")
    throughput.set_ylim(bottom=0)
    throughput.legend(loc="lower right")
    kinds = sorted({o for entry in seconds for o in entry.outcomes if o != OK})
    for kind in kinds:
        label = f"{kind} (expected)" if kind == EXPECTED_ERROR else kind
        errors.plot(minutes, smoothed([e.outcomes[kind] for e in seconds], window), linewidth=0.8, label=label)
    errors.set_ylabel(f"non-OK / s ({window} s mean)")
    if kinds:
        errors.legend(loc="upper right", fontsize="small")
    p50 = [percentile(entry.latencies, 50) or math.nan for entry in seconds]
    p99 = [percentile(entry.latencies, 99) or math.nan for entry in seconds]
    latency.plot(minutes, np.array(p50) * 1000, linewidth=0.6, label="p50")
    latency.plot(minutes, np.array(p99) * 1000, linewidth=0.6, label="p99")
    latency.set_ylabel("latency per second (ms)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper right")
    names = sorted({name for entry in seconds for name in entry.rss_by_process})
    for name in names:
        points = [(e.at / 60, e.rss_by_process[name] / MiB) for e in seconds if name in e.rss_by_process]
        memory.plot(*zip(*points, strict=True), linewidth=0.8, label=name)
    if len(names) > 1:
        memory.legend(loc="upper left", fontsize="small")
    memory.set_ylabel("RSS per process (MiB)" if len(names) > 1 else "server RSS (MiB)")
    memory.set_xlabel("minutes")
    figure.suptitle(
        f"soak: {summary['sent']} requests at {summary['offered_rate']}/s, lost {summary['lost']}, "
        f"wrong {summary['wrong_answers']}, RSS growth after warm-up {summary.get('growth_after_warm_up_mib')} MiB"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def smoothed(values: list[int], window: int) -> np.ndarray:
    """Trailing mean over `window` points (the first points average what there is)."""
    cumulative = np.cumsum(np.asarray(values, dtype=np.float64))
    shifted = (
        np.concatenate([np.zeros(window), cumulative[:-window]]) if window < len(values) else np.zeros(len(values))
    )
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative - shifted[: len(values)]) / counts


def process_rss(pid: int) -> int | None:
    """Resident bytes of process `pid` from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def server_memory(pid: int, log_path: Path) -> Memory:
    """The RSS of server `pid` and of every process below it, by name: "supervisor", "engine" and "front-end N"
    as the supervisor's log introduces them (a restarted front-end goes on under "front-end N (pid P)"), or
    "server" for a server of one process."""
    names: dict[int, str] = {}

    def name_children() -> None:
        with contextlib.suppress(OSError):
            for role, child in _STARTED.findall(log_path.read_text(errors="replace")):
                if int(child) not in names:
                    taken = role in names.values()
                    names[int(child)] = f"{role} (pid {child})" if taken else role

    def read() -> dict[str, int]:
        children = descendants(pid)
        if any(child not in names for child in children):
            name_children()
            for child in children:
                if child not in names and (helper := helper_name(child)) is not None:
                    names[child] = helper
        found = {}
        for each in (pid, *children):
            value = process_rss(each)
            if value is not None:
                own = "supervisor" if len(children) else SERVER
                found[own if each == pid else names.get(each, f"pid {each}")] = value
        return found

    return read


def helper_name(pid: int) -> str | None:
    """What to call a child process the supervisor does not introduce: "resource tracker" for Python's
    multiprocessing resource tracker (which every multi-process server has); None for anything else."""
    with contextlib.suppress(OSError):
        if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return "resource tracker"
    return None


def metrics_memory(url: str) -> Memory:
    def read() -> dict[str, int]:
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return {}
        found = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.MULTILINE)
        return {SERVER: int(float(found.group(1)))} if found else {}

    return read


@contextmanager
def server_under_soak(args: argparse.Namespace) -> Iterator[tuple[str, Memory]]:
    """The target and a memory reader: of the server given, or of one started here (and stopped afterwards)."""
    if args.server:
        yield args.server, metrics_memory(args.metrics_url) if args.metrics_url else dict
        return
    repository = args.model_repository
    missing = [name for name in ("xo", "mnist_net") if not (repository / name).is_dir()]
    if missing:
        raise SystemExit(f"{repository} lacks {missing}; `make run` or `cnnserve train NAME --out {repository}`")
    log_path = args.out / "soak-server.log"
    with running_server(repository, *(args.serve_flag or []), log_path=log_path) as server:
        print(f"server pid {server.pid} on {server.target}, log {log_path}", file=sys.stderr)
        yield server.target, server_memory(server.pid, log_path)


async def soak(target: str, memory: Memory, settings: SoakSettings) -> tuple[Recorder, dict]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with grpc.insecure_channel(target) as channel:
        good, bad = build_payloads(pb_grpc.ImageClassifierStub(channel), settings.seed)
    # A channel of its own subchannel pool each: otherwise grpc shares one connection among equal channels.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(settings.connections)
    ]
    try:
        stubs = [pb_grpc.ImageClassifierStub(channel) for channel in channels]
        recorder = await run_load(stubs, good, bad, settings, memory, stop)
    finally:
        for channel in channels:
            await channel.close()
    return recorder, summarise(recorder, settings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load; default 600")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second; default 100")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline of each call in seconds; default 5")
    parser.add_argument("--max-in-flight", type=int, default=512, help="outstanding calls at most; default 512")
    parser.add_argument("--bad-fraction", type=float, default=0.01, help="share of undecodable images; 0.01")
    parser.add_argument(
        "--cancel-fraction", type=float, default=0.01, help="share of calls cancelled by the caller; 0.01"
    )
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections; default 4")
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds before memory growth counts; 60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-repository", type=Path, default=Path("models"), help="served when no --server")
    parser.add_argument("--serve-flag", action="append", help="extra `cnnserve serve` flag (repeatable)")
    parser.add_argument("--server", help="HOST:PORT of a running server instead of starting one")
    parser.add_argument("--metrics-url", help="with --server: its /metrics URL, for the RSS")
    parser.add_argument("--out", type=Path, default=Path("load_tests/results"), help="default load_tests/results")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections < 1:
        parser.error("--rate, --duration and --connections must be positive")
    if not (0 <= args.bad_fraction <= 1 and 0 <= args.cancel_fraction <= 1):
        parser.error("--bad-fraction and --cancel-fraction must be within 0..1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = SoakSettings(
        duration=args.duration,
        rate=args.rate,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        bad_fraction=args.bad_fraction,
        cancel_fraction=args.cancel_fraction,
        connections=args.connections,
        warm_up=min(args.warm_up, args.duration / 2),
        out=args.out,
        seed=args.seed,
    )
    with server_under_soak(args) as (target, memory):
        recorder, summary = asyncio.run(soak(target, memory, settings))
    stem = args.out / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    timeline = [
        {
            "second": entry.at,
            "outcomes": dict(entry.outcomes),
            "p50_ms": _ms(percentile(entry.latencies, 50)),
            "p99_ms": _ms(percentile(entry.latencies, 99)),
            "rss_bytes": entry.rss_bytes,
            "rss_by_process": entry.rss_by_process,
        }
        for entry in (recorder.seconds[k] for k in sorted(recorder.seconds))
    ]
    record = {"settings": {**asdict(settings), "out": str(settings.out)}, "summary": summary, "timeline": timeline}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    plot(recorder, summary, stem.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0 if summary["lost"] == 0 and summary["wrong_answers"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
