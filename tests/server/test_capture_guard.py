"""A CUDA graph capture runs alone in its process: ONNX Runtime captures in CUDA's global mode, so any other
thread's device call meanwhile breaks it (server/capture_guard.py). These tests hold the guard from real threads;
one shows a warm-up that captures waiting for another session's use of the device to end."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from cnnserve.repository_layout import MODEL_FILE
from cnnserve.server.capture_guard import CAPTURE_GUARD, CaptureGuard
from cnnserve.server.metrics import ServerMetrics
from cnnserve.server.model import ModelState, ModelVersion
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_spec import load_spec
from cnnserve.server.runtime import create_session
from cnnserve.server.session_runner import RunPlan, SessionRunner
from cnnserve.server.settings import ExecutionProvider, RuntimeSettings, ServerSettings

SETTLE = 0.2
"""Long enough for a blocked thread to have gone on, had it not been blocked."""


def started(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def used_from_another_thread(guard: CaptureGuard) -> threading.Event:
    """Start a thread that uses the device through `guard`; the event is set once it is inside."""
    inside = threading.Event()

    def use() -> None:
        with guard.using_device():
            inside.set()

    started(use)
    return inside


def test_uses_of_the_device_share_it() -> None:
    guard = CaptureGuard()
    with guard.using_device(), guard.using_device():
        inside = used_from_another_thread(guard)
        assert inside.wait(5)
    assert guard.users == 0


def test_a_capture_waits_for_the_uses_under_way_and_holds_new_ones_back() -> None:
    guard = CaptureGuard()
    events: list[str] = []
    run_under_way = guard.using_device()
    run_under_way.__enter__()

    def capture() -> None:
        with guard.alone():
            events.append("capture begins")
            time.sleep(SETTLE)
            events.append("capture ends")

    def later_run() -> None:
        with guard.using_device():
            events.append("later run")

    capturing = started(capture)
    time.sleep(SETTLE)
    assert events == [], "the capture began while a run was under way"
    later = started(later_run)
    time.sleep(SETTLE)
    assert events == [], "a run that came after the waiting capture went first"
    run_under_way.__exit__(None, None, None)
    capturing.join(5)
    later.join(5)
    assert events == ["capture begins", "capture ends", "later run"]


def test_the_capturing_thread_runs_its_own_session_and_captures_take_turns() -> None:
    guard = CaptureGuard()
    order: list[str] = []

    def capture(name: str) -> None:
        with guard.alone(), guard.using_device():  # the capture's own runs
            order.append(f"{name} begins")
            time.sleep(SETTLE / 2)
            order.append(f"{name} ends")

    threads = [started(lambda name=name: capture(name)) for name in ("a", "b")]
    for thread in threads:
        thread.join(5)
    assert len(order) == 4
    assert order[0].split()[0] == order[1].split()[0] and order[1].endswith("ends"), order
    assert guard.users == 0


def test_a_warm_up_that_captures_cuda_graphs_waits_for_other_sessions_to_leave_the_device(
    model_repository: Path,
) -> None:
    """On the CPU no graph is captured, but the warm-up of a plan with CUDA graphs takes the guard all the same:
    here it must not begin while another thread holds the device."""
    model_dir = model_repository / "mnist_net"
    model_file = sorted(model_dir.glob(f"*/{MODEL_FILE}"))[-1]
    loaded = create_session(model_file, RuntimeSettings(execution_provider=ExecutionProvider.CPU))
    spec = load_spec(loaded.session, model_file, ModelConfig.read(model_dir), model_dir.name)
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(2, 4), cuda_graphs=True), instances=1)
    warmed: list[tuple[int, ...]] = []
    other_session = CAPTURE_GUARD.using_device()
    other_session.__enter__()
    try:
        warming = started(lambda: warmed.append(runner.warm_up({1})))
        time.sleep(SETTLE)
        assert warmed == [], "the warm-up ran while another session used the device"
    finally:
        other_session.__exit__(None, None, None)
    warming.join(10)
    assert warmed == [(2, 4)]
    assert CAPTURE_GUARD.users == 0


def test_a_capture_that_fails_lets_the_device_go() -> None:
    guard = CaptureGuard()
    with pytest.raises(RuntimeError, match="capture failed"), guard.alone():
        raise RuntimeError("the capture failed")
    used = used_from_another_thread(guard)
    assert used.wait(5)


def test_a_use_nested_in_another_passes_even_with_a_capture_waiting() -> None:
    """A thread that holds the device and uses it again (creating a session inside a check, say) must not queue
    behind a capture that is itself waiting for that thread's outer use."""
    guard = CaptureGuard()
    captured = threading.Event()

    def capture() -> None:
        with guard.alone():
            captured.set()

    with guard.using_device():
        capturing = started(capture)
        time.sleep(SETTLE)
        with guard.using_device():
            assert not captured.is_set()
    capturing.join(5)
    assert captured.is_set()


def test_a_capture_inside_its_own_threads_use_is_refused() -> None:
    guard = CaptureGuard()
    with guard.using_device(), pytest.raises(RuntimeError, match="holds the device shared"), guard.alone():
        pass
    assert guard.users == 0


def test_with_cuda_graphs_a_version_s_fp16_check_waits_to_hold_the_device_alone(model_repository: Path) -> None:
    """A fresh fp16 session's first runs broke another session's creation beside them on an H200 (server/model.py,
    `_check_runs_hold_the_device`): with CUDA graphs set, the check's runs wait until no other use holds the
    device, and then the version loads. (The setting does nothing else on the CPU.)"""
    model_dir = model_repository / "mnist_net"
    settings = ServerSettings.load(
        None,
        model_repository=model_repository,
        execution_provider="cpu",
        precision="fp16",
        cuda_graphs=True,
        instances=1,
    )
    version = ModelVersion("mnist_net", 1, sorted(model_dir.glob(f"*/{MODEL_FILE}"))[-1].parent)
    loaded_as: list[tuple[ModelState, str, object]] = []

    async def load_then_unload() -> None:
        await version.load(ModelConfig.read(model_dir), settings, ServerMetrics())
        agreement = version.run_info.fp16_agreement if version.run_info is not None else None
        loaded_as.append((version.state, version.reason, agreement))
        await version.unload(0)

    loading = started(lambda: asyncio.run(load_then_unload()))
    other_session = CAPTURE_GUARD.using_device()
    other_session.__enter__()
    try:
        time.sleep(SETTLE * 5)
        assert loaded_as == [], "the fp16 check ran while another session used the device"
    finally:
        other_session.__exit__(None, None, None)
    loading.join(30)
    ((state, reason, agreement),) = loaded_as
    assert state is ModelState.READY, reason
    assert agreement is not None
    assert CAPTURE_GUARD.users == 0
