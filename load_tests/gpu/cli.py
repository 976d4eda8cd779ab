"""The GPU check's command line, parsed the same way before and after it re-executes itself.

Standard library only: the first stage runs under the GPU host's own Python, before anything is installed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CUDA = "cuda"
CPU = "cpu"
DEFAULT_WHEELS = Path("gpu-wheels")
DEFAULT_BUDGET_SECONDS = 480.0
PHASES = ("correctness", "loading", "bare", "shapes", "server", "frontends")
"""What the check does, in order: every model on the provider against the CPU; a server loading every model at once
with CUDA graphs; bare ONNX Runtime; what a change of batch shape costs a session; the server in several
configurations; the front-end sweep under h2load."""


@dataclass(frozen=True)
class CheckOptions:
    """What one run of the check was asked to do."""

    wheels: Path
    models: Path
    out: Path
    provider: str
    """cuda, or cpu for the dry run: every step on the CPU provider, with tiny windows."""
    budget_seconds: float
    install: bool
    venv: Path
    check_targets: bool
    device_id: int
    phases: tuple[str, ...] = PHASES
    servers: tuple[str, ...] = ()
    """The server phase's configurations to run, by name; empty: all of them."""

    @property
    def dry_run(self) -> bool:
        return self.provider == CPU


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="gpu_check",
        description=(
            "Install cnnserve and onnxruntime-gpu from a local wheel folder, check every model of a repository "
            "on CUDA against the CPU, and measure bare ONNX Runtime and the server on the GPU. "
            "Writes gpu_check.json, gpu_check.md and PNG plots to --out."
        ),
    )
    parse.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="folder of wheels and wheel parts")
    parse.add_argument("--models", type=Path, default=None, help="model repository (default: WHEELS/models)")
    parse.add_argument("--out", type=Path, required=True, help="folder for the JSON, Markdown and plots")
    parse.add_argument(
        "--provider", choices=(CUDA, CPU), default=CUDA, help="cpu: the dry run, everything on the CPU provider"
    )
    parse.add_argument(
        "--budget-seconds",
        type=float,
        default=DEFAULT_BUDGET_SECONDS,
        help="the whole run, installation included; measuring stops early to stay inside it",
    )
    parse.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="run in this interpreter as it is (it must have cnnserve and, for cuda, onnxruntime-gpu)",
    )
    parse.add_argument("--venv", type=Path, default=None, help="where to install (default: WHEELS/venv)")
    parse.add_argument("--check-targets", action="store_true", help="exit 1 when a performance target is missed")
    parse.add_argument("--device-id", type=int, default=0, help="the CUDA device to use")
    parse.add_argument(
        "--phases",
        type=_phases,
        default=PHASES,
        help=f"comma-separated, of {','.join(PHASES)} (default all; they run in that order whatever is given)",
    )
    parse.add_argument(
        "--servers",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        default=(),
        help="comma-separated names of the server phase's configurations to run (default all: default, "
        "no_io_binding, fp16, cuda_graphs, buckets, frontends_N, gil_switch, frontends_N_gil_switch)",
    )
    return parse


def _phases(text: str) -> tuple[str, ...]:
    asked = {part.strip() for part in text.split(",") if part.strip()}
    unknown = asked - set(PHASES)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return tuple(phase for phase in PHASES if phase in asked)


def parse_options(argv: Sequence[str] | None = None) -> CheckOptions:
    args = parser().parse_args(argv)
    wheels = args.wheels.resolve()
    return CheckOptions(
        wheels=wheels,
        models=(args.models or wheels / "models").resolve(),
        out=args.out.resolve(),
        provider=args.provider,
        budget_seconds=args.budget_seconds,
        install=args.install,
        venv=(args.venv or wheels / "venv").resolve(),
        check_targets=args.check_targets,
        device_id=args.device_id,
        phases=args.phases,
        servers=args.servers,
    )
