"""The GPU check in one command: install from a local wheel folder, then check and measure cnnserve on CUDA.

    python load_tests/gpu_check.py --wheels gpu-wheels --out docs/benchmarks/gpu      # or: make gpu-check
    python -m load_tests.gpu_check --provider cpu --no-install --models M --out OUT   # the dry run

For a Linux host with one NVIDIA GPU, Python 3.12 with PyTorch's CUDA 13 libraries (the nvidia-* pip packages)
installed, and no network. The wheel folder comes from `load_tests/gpu_wheels.py` (`make gpu-wheels`): the
cnnserve wheel, onnxruntime-gpu (possibly in `split` parts, joined here), every dependency, pip itself, and a
model repository under `models/`. Two stages, in one process:

1. standard library only, in whatever Python started it: join split wheels, pick or install the interpreter
   (load_tests/gpu/environment.py explains how), and re-execute this file there with the CUDA libraries'
   folders on LD_LIBRARY_PATH;
2. in that interpreter (load_tests/gpu/run.py): every model on CUDA against the CPU, bare ONNX Runtime at batch
   sizes 1 to 256, the server in several configurations, then gpu_check.json, gpu_check.md and plots in --out.

Exit status: 0 when every check passed, 1 when one failed (or, with --check-targets, a target was missed),
2 when the environment could not be prepared.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: the checkout's `load_tests`, after the installed packages
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from load_tests.gpu.budget import Budget
from load_tests.gpu.cli import parse_options
from load_tests.gpu.environment import inherited_budget, measuring_environment, prepare_interpreter, reexecute
from load_tests.gpu.wheelhouse import WheelhouseError

SCRIPT = Path(__file__).resolve()


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(arguments)
    budget = inherited_budget()
    if budget is None:
        budget = Budget.starting_now(options.budget_seconds)
        budget.say(f"GPU check, provider {options.provider}, models {options.models}, out {options.out}")
        try:
            interpreter = prepare_interpreter(options, budget)
        except (RuntimeError, WheelhouseError, OSError) as exc:
            budget.say(f"cannot prepare the environment: {exc}")
            return 2
        reexecute(interpreter, SCRIPT, arguments, measuring_environment(interpreter, budget))
    from load_tests.gpu.run import run_check

    return run_check(options, budget, arguments)


if __name__ == "__main__":
    raise SystemExit(main())
