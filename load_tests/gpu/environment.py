"""The interpreter the GPU check measures in: found or installed, then entered by re-executing the check.

The GPU host's Python (3.12, with PyTorch's CUDA 13 libraries and the CPU `onnxruntime`) lacks cnnserve and
onnxruntime-gpu, and has no network. So, unless the running interpreter can already do the work:

1. a virtual environment is created without pip, and a `.pth` file adds the running interpreter's
   site-packages *after* its own. A plain `--system-site-packages` would not do: when the running Python is
   itself a venv (PyTorch's), that flag reaches the base interpreter's folders, not the ones holding torch's
   nvidia libraries. The venv's own site-packages come first, so the onnxruntime-gpu installed there shadows
   the CPU `onnxruntime` of the parent (both install the same `onnxruntime` module);
2. pip, run from the pip wheel in the wheel folder, installs the cnnserve wheel and onnxruntime-gpu with
   `--no-index --find-links WHEELS`; what the parent already has at a fitting version is left to it;
3. the check re-executes itself in that interpreter with `LD_LIBRARY_PATH` naming every `nvidia/*/lib` folder
   on its path: ONNX Runtime's CUDA provider links libcudart, libcublas, libcurand and loads cuDNN by name, and
   the server processes the check starts inherit the variable. `-P` and PYTHONSAFEPATH keep the checkout's own
   `cnnserve/` folder (the package root only, without `server/`) from shadowing the installed package, in the
   check and in every server it starts.

Standard library only.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load_tests.gpu.budget import Budget
from load_tests.gpu.cli import CUDA, CheckOptions
from load_tests.gpu.wheelhouse import MEBIBYTE, fingerprint, join_parts

STAGE_VARIABLE = "GPU_CHECK_STAGE"
MEASURE_STAGE = "measure"
STARTED_VARIABLE = "GPU_CHECK_STARTED_AT"
DEADLINE_VARIABLE = "GPU_CHECK_DEADLINE"
INSTALLED_MARKER = "gpu-check-installed.txt"
PARENT_PATH_FILE = "gpu-check-parent-site.pth"
CHECK_REQUIREMENTS = ("matplotlib", "psutil", "py-spy")
"""What the check itself needs beyond cnnserve's dependencies: its plots, its CPU readings and the profiles of
the front-end sweep. gpu_wheels.py downloads them too."""
_INSTALL_TIMEOUT_SECONDS = 300

_PROBE = r"""
import importlib.metadata as metadata, json, sys
report = {"python": sys.version.split()[0], "executable": sys.executable, "path": sys.path}
try:
    import onnxruntime
    report["onnxruntime"] = {
        "version": onnxruntime.__version__, "file": onnxruntime.__file__,
        "providers": onnxruntime.get_available_providers(),
        "cuda_version": getattr(onnxruntime, "cuda_version", "") or "",
    }
except Exception as exc:
    report["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
try:
    report["onnxruntime_gpu"] = metadata.version("onnxruntime-gpu")
except metadata.PackageNotFoundError:
    report["onnxruntime_gpu"] = None
try:
    import cnnserve, cnnserve.server.launcher, cnnserve.server.runtime
    report["cnnserve"] = cnnserve.__file__
except Exception as exc:
    report["cnnserve_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
"""


@dataclass(frozen=True)
class Interpreter:
    """What a Python interpreter offers the check, as it reported it itself."""

    executable: Path
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def probe(cls, executable: Path) -> Interpreter:
        """Ask `executable` (in a child process, with -P so the current folder shadows nothing)."""
        completed = subprocess.run(
            [str(executable), "-P", "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
        )
        if completed.returncode != 0:
            return cls(executable, {"probe_error": completed.stderr.strip()[-2000:]})
        return cls(executable, json.loads(completed.stdout.strip().splitlines()[-1]))

    def problems(self, provider: str) -> list[str]:
        """Why this interpreter cannot run the check on `provider`; empty when it can."""
        report = self.report
        found = [report[key] for key in ("probe_error", "onnxruntime_error", "cnnserve_error") if key in report]
        if found:
            return found
        if provider == CUDA:
            if "CUDAExecutionProvider" not in report["onnxruntime"]["providers"]:
                return [f"its onnxruntime ({report['onnxruntime']['file']}) has no CUDAExecutionProvider"]
            if report.get("onnxruntime_gpu") is None:
                return ["onnxruntime-gpu is not installed in it"]
        return []

    def library_dirs(self) -> list[str]:
        """Every `nvidia/<package>/lib` folder holding shared libraries on this interpreter's path: where the
        pip packages of CUDA (nvidia-cublas, nvidia-cuda-runtime, ... in `nvidia/cu13/lib` since CUDA 13) and
        cuDNN (`nvidia/cudnn/lib`) put their libraries."""
        found: list[str] = []
        for entry in self.report.get("path", []):
            root = Path(entry or ".") / "nvidia"
            if not root.is_dir():
                continue
            for package in sorted(root.iterdir()):
                lib = package / "lib"
                if lib.is_dir() and any(lib.glob("*.so*")) and str(lib) not in found:
                    found.append(str(lib))
        return found


def prepare_interpreter(options: CheckOptions, budget: Budget) -> Interpreter:
    """The interpreter to measure in: this one when it can (always with --no-install), else the check's venv,
    created and installed from the wheel folder unless an earlier run left it installed from the same wheels.

    Raises RuntimeError saying what is missing.
    """
    current = Interpreter.probe(Path(sys.executable))
    problems = current.problems(options.provider)
    if not problems:
        budget.say(f"using this interpreter as it is ({sys.executable})")
        return current
    if not options.install:
        raise RuntimeError(f"--no-install, but {sys.executable} cannot run the check: {'; '.join(problems)}")
    budget.say(f"this interpreter cannot run the check ({'; '.join(problems)}): installing into {options.venv}")
    if not options.wheels.is_dir():
        raise RuntimeError(f"no wheel folder at {options.wheels}; prepare it with `make gpu-wheels`")
    for joined in join_parts(options.wheels):
        budget.say(f"joined {joined.name} from its parts ({joined.stat().st_size / MEBIBYTE:.0f} MiB)")
    venv_python = options.venv / "bin" / "python"
    marker = options.venv / INSTALLED_MARKER
    wanted = fingerprint(options.wheels)
    if not (marker.is_file() and marker.read_text().strip() == wanted and venv_python.exists()):
        _create_venv(options.venv, budget)
        _install(venv_python, options.wheels, budget)
        marker.write_text(wanted + "\n")
    else:
        budget.say(f"{options.venv} was installed from these very wheels; reusing it")
    installed = Interpreter.probe(venv_python)
    problems = installed.problems(options.provider)
    if problems:
        raise RuntimeError(f"after installing, {venv_python} still cannot run the check: {'; '.join(problems)}")
    return installed


def _create_venv(venv: Path, budget: Budget) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-P", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    parents = [path for path in site.getsitepackages() if Path(path).is_dir()]
    lines = [f"import site; site.addsitedir({path!r})" for path in parents]
    Path(purelib, PARENT_PATH_FILE).write_text("\n".join(lines) + "\n")
    budget.say(f"created {venv}; it sees this interpreter's packages after its own: {', '.join(parents)}")


def install_command(python: Path, wheels: Path) -> list[str]:
    """pip, run from the wheel folder's pip wheel, installing cnnserve's wheel, onnxruntime-gpu at the folder's
    version and the check's own needs, from the folder alone. Raises RuntimeError when a wheel is missing."""
    pip = _one(wheels, "pip-*.whl")
    cnnserve = _one(wheels, "cnnserve-*.whl")
    gpu_wheel = _one(wheels, "onnxruntime_gpu-*.whl")
    version = gpu_wheel.name.split("-")[1]
    return [
        str(python),
        str(pip / "pip"),
        "install",
        "--no-index",
        "--find-links",
        str(wheels),
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--progress-bar",
        "off",
        str(cnnserve),
        f"onnxruntime-gpu=={version}",
        *CHECK_REQUIREMENTS,
    ]


def _install(python: Path, wheels: Path, budget: Budget) -> None:
    command = install_command(python, wheels)
    budget.say(f"installing: {' '.join(Path(arg).name for arg in command[4:])}")
    completed = subprocess.run(command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_SECONDS, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(("Successfully installed", "Requirement already satisfied: onnxruntime")):
            budget.say(f"pip: {line}")
    if completed.returncode != 0:
        output = completed.stdout[-3000:] + completed.stderr[-3000:]
        raise RuntimeError(f"pip could not install from {wheels}:\n{output}")


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise RuntimeError(f"no {pattern} in {folder}; prepare it with `make gpu-wheels` (load_tests/gpu_wheels.py)")
    return found[-1]


def measuring_environment(interpreter: Interpreter, budget: Budget) -> dict[str, str]:
    """This process's environment for the measuring stage: the stage marker and budget, the CUDA libraries'
    folders first on LD_LIBRARY_PATH, and safe paths (see the module docstring)."""
    environment = dict(os.environ)
    libraries = interpreter.library_dirs()
    if libraries:
        before = [entry for entry in environment.get("LD_LIBRARY_PATH", "").split(os.pathsep) if entry]
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys([*libraries, *before]))
    environment.update(
        {
            STAGE_VARIABLE: MEASURE_STAGE,
            STARTED_VARIABLE: repr(budget.started_at),
            DEADLINE_VARIABLE: repr(budget.deadline),
            "PYTHONSAFEPATH": "1",
        }
    )
    return environment


def reexecute(interpreter: Interpreter, script: Path, argv: list[str], environment: dict[str, str]) -> None:
    """Replace this process by the check's measuring stage in `interpreter`; does not return."""
    executable = str(interpreter.executable)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, [executable, "-P", str(script), *argv], environment)


def inherited_budget() -> Budget | None:
    """The budget the first stage handed over, in the measuring stage; None in the first stage."""
    if os.environ.get(STAGE_VARIABLE) != MEASURE_STAGE:
        return None
    return Budget(float(os.environ[STARTED_VARIABLE]), float(os.environ[DEADLINE_VARIABLE]))
