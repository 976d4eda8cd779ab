"""How the supervisor shapes a server: how many front-ends `--frontends auto` starts, and the engine's threads
(ONNX Runtime gets the cores the front-ends leave, unless told otherwise)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cnnserve.server.launcher import ServerProcess
from cnnserve.server.settings import ServerSettings
from cnnserve.server.supervisor import auto_frontends, cpu_quota, engine_settings, nvidia_gpu_visible, usable_cpus


def test_usable_cores_never_exceed_the_affinity() -> None:
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_without_cpu_affinity_the_core_count_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on macOS, whose os module has no sched_getaffinity."""
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus(tmp_path) == os.cpu_count()


def test_a_container_quota_is_read_from_cgroup_v2_or_v1(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    v2.mkdir()
    assert cpu_quota(v2) is None and cpu_quota(v1) is None
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2) is None
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert cpu_quota(v2) == 3
    assert usable_cpus(v2) == min(3, len(os.sched_getaffinity(0)))
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cpu_quota(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert cpu_quota(v1) == 1
    assert usable_cpus(v1) == 1


def test_the_engine_takes_the_cores_the_front_ends_leave(tmp_path: Path) -> None:
    settings = ServerSettings(model_repository=tmp_path)
    sized = engine_settings(settings, frontends=1, port_file=tmp_path / "engine.json")
    assert sized.intra_op_threads == max(1, usable_cpus() - 1)
    assert sized.port_file == tmp_path / "engine.json"
    assert engine_settings(settings, frontends=64, port_file=tmp_path / "e.json").intra_op_threads == 1


def test_threads_set_by_the_operator_are_kept(tmp_path: Path) -> None:
    settings = ServerSettings(model_repository=tmp_path, intra_op_threads=3)
    assert engine_settings(settings, frontends=2, port_file=tmp_path / "engine.json").intra_op_threads == 3


@pytest.mark.parametrize(
    ("cores", "gpu", "provider", "frontends"),
    [
        (16, True, "auto", 8),
        (16, True, "cuda", 8),
        (9, True, "auto", 4),
        (8, True, "auto", 4),
        (7, True, "auto", 0),
        (4, True, "cuda", 0),
        (16, False, "auto", 0),
        (64, False, "auto", 0),
        (16, True, "cpu", 0),
    ],
)
def test_auto_splits_only_a_gpu_host_with_cores_to_spare(
    cores: int, gpu: bool, provider: str, frontends: int, tmp_path: Path
) -> None:
    settings = ServerSettings(model_repository=tmp_path, execution_provider=provider)
    assert auto_frontends(settings, cores=cores, gpu=gpu) == frontends


def test_a_server_started_with_the_defaults_says_what_auto_chose(server: ServerProcess) -> None:
    if nvidia_gpu_visible():
        pytest.skip("this machine has an NVIDIA GPU")
    assert re.search(r"frontends auto: one process \(\d+ usable cores, no NVIDIA GPU with ONNX", server.log())
    assert "front-end 0 started" not in server.log()


def test_a_gpu_is_seen_through_its_device_file_unless_cuda_hides_every_device(tmp_path: Path) -> None:
    devices = tmp_path / "dev"
    devices.mkdir()
    (devices / "nvidiactl").touch()
    (devices / "nvidia-uvm").touch()
    assert not nvidia_gpu_visible(devices, {})
    (devices / "nvidia0").touch()
    assert nvidia_gpu_visible(devices, {})
    assert nvidia_gpu_visible(devices, {"CUDA_VISIBLE_DEVICES": "0,1"})
    for hidden in ("", "-1", "none", "NoDevFiles"):
        assert not nvidia_gpu_visible(devices, {"CUDA_VISIBLE_DEVICES": hidden})
    assert not nvidia_gpu_visible(tmp_path / "absent", {})
