"""The front-end sweep on the GPU host: `cnnserve serve --frontends N` against a bare grpc.aio server of as many
processes, under h2load, for several N.

A GPU host is where the split into front-ends and one engine is meant to pay: many cores for the protocol work and
a GPU that runs a small CNN's batch in a fraction of a millisecond. This phase runs `load_tests.bench.h2load_compare`'s
sweep there (mnist_net single-image ModelInfer, the issue's measure), with the server on the check's provider, so
each GPU run says how requests/s grow with front-ends and how close each count comes to a bare server of as many
processes. A Python load generator could not tell: it saturates below what several front-ends answer. After each
measured cnnserve run, one more at the same load is sampled with py-spy (installed with the check) into the logs,
with a summary per process, so a run that falls short says where the time went without py-spy in its figures.

h2load is Debian's (`nghttp2-client`); a host without it can run the copy `gpu_wheels.py` bundles into the wheel
folder (`h2load/`, the binary, its libraries beyond the C runtime and a wrapper that finds them). Without either,
the phase is skipped and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnserve.server.launcher import ServerStartError
from load_tests.bench import h2load, h2load_compare
from load_tests.gpu.budget import Budget
from load_tests.gpu.results import CheckResult, Skipped
from load_tests.gpu.wheelhouse import BUNDLED_H2LOAD

SWEEP_PLOT = "frontends.png"
SERVER_START_SECONDS = 4.0
"""Expected per server start (cnnserve or bare) beyond its warm-up and window."""


@dataclass(frozen=True)
class SweepPlan:
    counts: tuple[int, ...]
    """Front-end counts, 0 for the single-process server."""
    in_flight: int
    connections: int
    threads: int
    seconds: float
    server_flags: tuple[str, ...]

    def seconds_needed(self) -> float:
        """cnnserve (its measured window, then the sampled one) and the bare server, per count."""
        per_server = SERVER_START_SECONDS + h2load_compare.WARM_UP_SECONDS + self.seconds
        return len(self.counts) * (2 * per_server + self.seconds)

    @classmethod
    def for_host(cls, cores: int, server_flags: tuple[str, ...], dry_run: bool) -> SweepPlan:
        """On a real host: 0, 1, 2, 4, 8, ... front-ends while they leave four cores to the engine and h2load,
        64 calls in flight (the issue's load) over 32 connections, so every front-end gets several; a small
        machine's dry run: 0 and 2, one second each."""
        if dry_run:
            return cls((0, 2), 16, 4, 1, 1.0, server_flags)
        counts = [0, 1]
        while counts[-1] * 2 <= max(1, cores - 4):
            counts.append(counts[-1] * 2)
        if cores - 4 > counts[-1] and cores >= 12:
            counts.append(cores - 4)
        return cls(tuple(counts), 64, 32, max(1, min(4, cores // 4)), 5.0, server_flags)


def find_h2load(wheels: Path) -> str | None:
    """h2load on PATH, else the wheel folder's bundled copy (put first on PATH, so the sweep finds it)."""
    try:
        return h2load.h2load_executable()
    except h2load.H2loadMissing:
        pass
    bundled = wheels / BUNDLED_H2LOAD
    if not (bundled / BUNDLED_H2LOAD).is_file():
        return None
    os.environ["PATH"] = os.pathsep.join([str(bundled), os.environ.get("PATH", "")])
    return h2load.h2load_executable()


def measure_frontends(
    plan: SweepPlan, repository: Path, wheels: Path, logs: Path, budget: Budget, result: CheckResult, out: Path
) -> None:
    """Run the sweep into `result` (its figures, its Markdown table) and draw it into `out`, or record why not."""
    what = f"front-end sweep ({', '.join(map(str, plan.counts))} front-ends, h2load)"
    executable = find_h2load(wheels)
    if executable is None:
        reason = f"h2load not found: {h2load.INSTALL_HINT}, or carry {wheels / BUNDLED_H2LOAD} from gpu_wheels.py"
        result.skipped.append(Skipped(what, reason))
        budget.say(f"{what}: skipped, {reason}")
        return
    if not budget.allows(plan.seconds_needed()):
        result.skipped.append(Skipped(what, f"out of time (needs ~{plan.seconds_needed():.0f} s)"))
        budget.say(f"{what}: skipped, out of time")
        return
    budget.say(f"{what}: h2load {executable}, {plan.in_flight} in flight over {plan.connections} connections")
    logs.mkdir(parents=True, exist_ok=True)

    def on_row(row: h2load_compare.Row) -> None:
        processes = f"{row.processes} process{'es' if row.processes > 1 else ''}"
        budget.say(
            f"front-ends {row.frontends}: cnnserve {row.cnnserve.requests_per_second:,.0f} requests/s, bare "
            f"({processes}) {row.bare.measurement.requests_per_second:,.0f}, ratio {row.ratio:.2f}"
        )

    try:
        sweep = h2load_compare.sweep(
            repository,
            logs,
            plan.counts,
            plan.seconds,
            plan.in_flight,
            plan.connections,
            on_row=on_row,
            threads=plan.threads,
            server_flags=plan.server_flags,
            profile_dir=logs,
        )
    except (ServerStartError, RuntimeError, OSError, ValueError) as exc:
        result.errors.append(f"{what}: {type(exc).__name__}: {str(exc)[-2000:]}")
        budget.say(f"{what}: failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return
    result.frontend_sweep = sweep.to_dict()
    result.frontend_sweep_table = h2load_compare.report(sweep)
    budget.say(f"drew {h2load_compare.plot(sweep, out / SWEEP_PLOT)}")
