"""The GPU check's `loading` phase: every model of the repository loaded at once, as a server starts.

A server loads its versions side by side, and with `--cuda-graphs` each one's warm-up captures CUDA graphs in
CUDA's global capture mode, which another thread's device call breaks (server/capture_guard.py). The server phase
serves two models; this phase starts a server over every model of the repository with each of
LOADING_CONFIGURATIONS, a few times (an interleaving that breaks a capture does not come every time), and asks
GetModel for each version's state and run plan. A start that loses a version, or loads one without the CUDA
graphs it was asked for, fails the check. On an H200 (2026-11-28), before the guard, 3 of 4 starts with CUDA
graphs over seven models lost 3 or 4 of them.
"""

from __future__ import annotations

import time
from pathlib import Path

from load_tests.bench.server import running_server
from load_tests.gpu.budget import Budget
from load_tests.gpu.cli import CUDA
from load_tests.gpu.results import LoadingStart

LOADING_CONFIGURATIONS = (
    ("cuda_graphs", ("--cuda-graphs", "--instances", "1")),
    ("cuda_graphs_fp16", ("--cuda-graphs", "--instances", "1", "--precision", "fp16")),
)
"""Name and flags of each server started over every model: the settings whose loads can break each other."""
START_SECONDS = 20.0
"""About the most one start over a seed repository takes on a GPU host (sessions, fp16 checks, captures)."""


def check_loading(
    repository: Path,
    models: list[str],
    base_flags: tuple[str, ...],
    provider: str,
    starts: int,
    budget: Budget,
    logs: Path,
) -> list[LoadingStart]:
    """Start a server over `repository` (holding `models`) `starts` times per configuration; on a provider other
    than CUDA the versions must load without CUDA graphs (the setting applies to CUDA alone)."""
    found: list[LoadingStart] = []
    logs.mkdir(parents=True, exist_ok=True)
    for name, extra in LOADING_CONFIGURATIONS:
        flags = [*base_flags, "--frontends", "0", *extra]
        for start in range(1, starts + 1):
            if not budget.allows(START_SECONDS):
                budget.say(f"loading {name}, start {start}: skipped, out of time")
                break
            run = LoadingStart(name, start, flags)
            log_path = logs / f"loading-{name}-{start}.log"
            run.log = f"{logs.name}/{log_path.name}"
            started = time.monotonic()
            try:
                with running_server(repository, flags, log_path) as server:
                    run.seconds = time.monotonic() - started
                    for model in models:
                        run.versions += 1
                        problem = _version_problem(server.model_info(model), graphs=provider == CUDA)
                        if problem:
                            run.problems.append(f"{model}: {problem}")
                        else:
                            run.ready += 1
            except (RuntimeError, OSError) as exc:
                run.problems.append(f"the server: {type(exc).__name__}: {str(exc)[-1500:]}")
            found.append(run)
            verdict = "ok" if not run.problems else "FAILED: " + "; ".join(p.splitlines()[0] for p in run.problems)
            budget.say(f"loading {name}, start {start}: {run.ready} of {run.versions} versions as asked: {verdict}")
    return found


def _version_problem(info: object, graphs: bool) -> str:
    """Why GetModel's first version is not READY with CUDA graphs as expected; empty when it is."""
    versions = getattr(info, "versions", [])
    if not versions:
        return "GetModel lists no version"
    version = versions[0]
    if version.state != "READY":
        return f"{version.state}: {version.reason}"[:500]
    if version.run.cuda_graphs != graphs:
        return f"runs with cuda_graphs {version.run.cuda_graphs}, expected {graphs}"
    return ""
