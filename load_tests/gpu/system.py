"""What the check ran on, and the evidence that CUDA was really used.

The measuring stage preloads the CUDA and cuDNN libraries (ONNX Runtime's own `preload_dlls`, which finds them
through LD_LIBRARY_PATH as the first stage set it) and then lists the ones this process has mapped, with their
paths: a run that says "CUDAExecutionProvider" but mapped no libcudnn did not run a convolution on the GPU.
While a server is measured, `nvidia-smi` samples the GPU's utilisation and memory, if it is there.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load_tests.bench._cpu import cpu_count

_CUDA_LIBRARY = re.compile(r"lib(cudart|cublas|cublasLt|cudnn|curand|cufft|nvrtc)[^/]*\.so[.\d]*$")
_SAMPLE_MILLISECONDS = 200


def preload_cuda_libraries() -> str:
    """Load CUDA and cuDNN the way ONNX Runtime documents it (`onnxruntime.preload_dlls()`, 1.21 and later);
    returns what it printed (it reports libraries it could not load on stdout)."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return f"onnxruntime {ort.__version__} has no preload_dlls"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ort.preload_dlls()
    return printed.getvalue().strip()


def mapped_cuda_libraries() -> list[str]:
    """Paths of the CUDA and cuDNN libraries this process has loaded (from /proc/self/maps), sorted."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    found = {line.split()[-1] for line in maps.splitlines() if _CUDA_LIBRARY.search(line.split()[-1])}
    return sorted(found)


def gpu_description(device_id: int) -> dict[str, str]:
    """nvidia-smi's name, driver, memory and CUDA version of the GPU; empty without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return {}
    fields = ("name", "driver_version", "memory.total", "compute_cap")
    completed = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader", "-i", str(device_id)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if completed.returncode != 0:
        return {"error": completed.stderr.strip() or completed.stdout.strip()}
    values = [value.strip() for value in completed.stdout.strip().split(",")]
    description = dict(zip(fields, values, strict=False))
    header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.search(r"CUDA Version:\s*([\d.]+)", header)
    if match:
        description["driver_cuda_version"] = match.group(1)
    return description


def machine_description(device_id: int) -> dict[str, Any]:
    import grpc
    import numpy
    import onnxruntime as ort

    from load_tests.bench.runner import machine_description as cpu_machine

    description = cpu_machine()
    description.update(
        {
            "logical_cpus": cpu_count(),
            "onnxruntime_file": ort.__file__,
            "onnxruntime_providers": ort.get_available_providers(),
            "onnxruntime_cuda_version": getattr(ort, "cuda_version", "") or "",
            "numpy": numpy.__version__,
            "grpcio": grpc.__version__,
            "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
            "gpu": gpu_description(device_id),
            "kernel": platform.release(),
        }
    )
    return description


@dataclass
class GpuSample:
    """The GPU over one measurement: mean and peak utilisation (%) and peak memory used (MiB)."""

    mean_utilization: float
    peak_utilization: float
    peak_memory_mib: float
    samples: int


class GpuSampler:
    """`nvidia-smi` sampling the GPU in the background while a point runs; `result` is None without it."""

    def __init__(self, device_id: int, enabled: bool) -> None:
        self._device_id = device_id
        self._enabled = enabled and shutil.which("nvidia-smi") is not None
        self.result: GpuSample | None = None

    @contextlib.contextmanager
    def sampling(self) -> Iterator[GpuSampler]:
        if not self._enabled:
            yield self
            return
        command = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            "-i",
            str(self._device_id),
            f"--loop-ms={_SAMPLE_MILLISECONDS}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            yield self
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=10)
            self.result = _summarise(output)


def _summarise(output: str) -> GpuSample | None:
    rows = []
    for line in output.splitlines():
        parts = [part.strip() for part in line.split(",")]
        with contextlib.suppress(ValueError):
            rows.append((float(parts[0]), float(parts[1])))
    if not rows:
        return None
    utilization = [row[0] for row in rows]
    return GpuSample(
        mean_utilization=sum(utilization) / len(rows),
        peak_utilization=max(utilization),
        peak_memory_mib=max(row[1] for row in rows),
        samples=len(rows),
    )
