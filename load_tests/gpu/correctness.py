"""Does every model give the CPU's answers on the GPU? fp32 to within 1e-4, fp16 with the same top-1 labels.

Each model of the repository is read the way the server reads it (its config.toml, its specification, the
server's own session builder and runner), and the same generated images (the smooth colour fields the server's
fp16 load check uses, through the model's own preprocessing) go through a CPU session and a session on the
provider under test. A session that silently fell back to the CPU is an error here, not a pass. When fp32
misses the tolerance on CUDA, the difference is measured again with TF32 off, so the report can tell the
tensor cores' reduced-precision matmuls (ONNX Runtime's CUDA default) from a real fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnnserve.repository_layout import newest_model_file
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_spec import ModelSpec, load_spec
from cnnserve.server.precision import check_images, compare_top1, fp16_model
from cnnserve.server.runtime import CPU, CUDA, create_session, cuda_options
from cnnserve.server.session_runner import plain_runner
from cnnserve.server.settings import ExecutionProvider, RuntimeSettings
from load_tests.gpu.cli import CUDA as CUDA_CHOICE
from load_tests.gpu.results import Correctness

IMAGES = 64


def runtime_settings(provider: str, device_id: int, **changes: object) -> RuntimeSettings:
    """The server's session settings for `provider` (cuda or cpu), required rather than preferred."""
    execution_provider = ExecutionProvider.CUDA if provider == CUDA_CHOICE else ExecutionProvider.CPU
    return RuntimeSettings(execution_provider=execution_provider, cuda_device_id=device_id, **changes)


def expected_provider(provider: str) -> str:
    return CUDA if provider == CUDA_CHOICE else CPU


def repository_models(repository: Path) -> list[Path]:
    """The model folders of `repository` that hold at least one version, by name."""
    return sorted(path for path in repository.iterdir() if path.is_dir() and newest_model_file(path) is not None)


def check_model(model_dir: Path, provider: str, device_id: int) -> Correctness:
    """Compare `model_dir`'s newest version on `provider` with the CPU; never raises (errors are recorded)."""
    result = Correctness(model_dir.name)
    try:
        _compare(model_dir, provider, device_id, result)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _compare(model_dir: Path, provider: str, device_id: int, result: Correctness) -> None:
    model_file = newest_model_file(model_dir)
    assert model_file is not None
    cpu = create_session(model_file, runtime_settings("cpu", device_id))
    spec = load_spec(cpu.session, model_file, ModelConfig.read(model_dir), model_dir.name)
    images = check_images(spec.preprocessing, IMAGES)
    result.images = len(images)
    reference = plain_runner(cpu.session, spec).run_all(images)

    runtime = runtime_settings(provider, device_id)
    tested = create_session(model_file, runtime)
    result.provider = tested.provider
    if tested.provider != expected_provider(provider):
        result.error = f"the session runs on {tested.provider}, not {expected_provider(provider)}"
        return
    result.max_abs_diff = _max_abs_diff(reference, plain_runner(tested.session, spec).run_all(images))
    if not result.fp32_passed and tested.provider == CUDA:
        result.no_tf32_max_abs_diff = _max_abs_diff(reference, _without_tf32(model_file, runtime, spec, images))

    try:
        fp16 = create_session(model_file, runtime, fp16_model(model_file))
        found = plain_runner(fp16.session, spec).run_all(images)
        result.fp16_agreement = compare_top1(reference, found, spec.metadata.output_kind).agreement
    except Exception as exc:
        result.fp16_error = f"{type(exc).__name__}: {exc}"


def _max_abs_diff(reference: np.ndarray, found: np.ndarray) -> float:
    if reference.shape != found.shape:
        raise ValueError(f"output shapes differ: {list(reference.shape)} on the CPU, {list(found.shape)} here")
    return float(np.max(np.abs(found.astype(np.float64) - reference.astype(np.float64))))


def _without_tf32(model_file: Path, runtime: RuntimeSettings, spec: ModelSpec, images: np.ndarray) -> np.ndarray:
    options = {**cuda_options(runtime), "use_tf32": "0"}
    session = ort.InferenceSession(str(model_file), providers=[(CUDA, options), CPU])
    return plain_runner(session, spec).run_all(images)
