"""How batches go through a session: IO binding on kept buffers, padding to buckets, warm-up of every bucket.

IO binding runs on the CPU provider through the same code as on CUDA (only where the buffers live differs), so
every answer here is compared with a plain `session.run` of the same graph on the same rows.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnnserve.repository_layout import MODEL_FILE
from cnnserve.server.errors import ModelLoadError
from cnnserve.server.model import ModelVersion
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.model_import import import_model
from cnnserve.server.model_spec import ModelSpec, load_spec
from cnnserve.server.runtime import CPU, CUDA, LoadedSession, create_session
from cnnserve.server.session_runner import (
    CAPTURE_RUNS,
    RunPlan,
    SessionRunner,
    ShapeChangeCost,
    plain_runner,
    resolve_plan,
    warm_up_sizes,
)
from cnnserve.server.settings import BatchingSettings, ExecutionProvider, RuntimeSettings
from cnnserve.server.spec_files import SpecTables
from tests.plain_models import classifier_graph, save, write_labels

ON_CPU = RuntimeSettings(execution_provider=ExecutionProvider.CPU)


def opened(model_dir: Path) -> tuple[LoadedSession, ModelSpec]:
    model_file = sorted(model_dir.glob(f"*/{MODEL_FILE}"))[-1]
    loaded = create_session(model_file, ON_CPU)
    return loaded, load_spec(loaded.session, model_file, ModelConfig.read(model_dir), model_dir.name)


@pytest.fixture(scope="module")
def mnist_net(model_repository: Path) -> tuple[LoadedSession, ModelSpec]:
    return opened(model_repository / "mnist_net")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain graphs as other tools write them: NHWC uint8 pixels, and a batch dimension fixed at 1."""
    folder = tmp_path_factory.mktemp("plain")
    root = folder / "repository"
    root.mkdir()
    labels = write_labels(folder / "labels.txt", 4)
    save(classifier_graph(layout="NHWC", dtype="uint8", size=(16, 16), seed=2), folder / "uint8.onnx")
    save(classifier_graph(channels=1, size=(14, 14), batch=1, final="LogSoftmax", seed=4), folder / "fixed.onnx")
    import_model(folder / "uint8.onnx", root, "pixels_uint8", labels, SpecTables())
    import_model(folder / "fixed.onnx", root, "fixed_batch", labels, SpecTables())
    return root


def digits_like(rows: int, spec: ModelSpec, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, *spec.preprocessing.input_shape)).astype(np.float32)


def reference(loaded: LoadedSession, spec: ModelSpec, batch: np.ndarray) -> np.ndarray:
    """The graph's output for each row alone, by plain session calls."""
    return np.concatenate([plain_runner(loaded.session, spec).run(batch[row : row + 1]) for row in range(len(batch))])


def test_io_binding_answers_as_plain_runs_do_at_every_batch_size(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(io_binding=True), instances=1)
    sizes = [*range(1, 11), 5, 1, 32]  # new sizes, then sizes seen before
    for seed, rows in enumerate(sizes):
        batch = digits_like(rows, spec, seed)
        np.testing.assert_allclose(runner.run(batch), reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)


def test_the_cpu_keeps_every_batch_size_bound_in_one_pair_of_arrays(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(io_binding=True), instances=1)
    runner.warm_up([1, 32])
    buffers = runner._free.get()
    runner._free.put(buffers)
    arrays = buffers._host
    sizes = [*range(32, 0, -1), *range(1, 33, 3)]  # far more sizes than CUDA keeps, under load's mix
    for seed, rows in enumerate(sizes):
        batch = digits_like(rows, spec, seed)
        np.testing.assert_allclose(runner.run(batch), reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)
    assert sorted(buffers.bound_sizes) == list(range(1, 33))
    assert buffers._host is arrays  # no size made buffers of its own


def test_an_answer_is_the_callers_own_copy_not_a_view_of_a_kept_buffer(
    mnist_net: tuple[LoadedSession, ModelSpec],
) -> None:
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(io_binding=True), instances=1)
    first_batch = digits_like(4, spec, seed=1)
    first = runner.run(first_batch)
    kept = first.copy()
    runner.run(digits_like(4, spec, seed=2))
    np.testing.assert_array_equal(first, kept)


def test_a_batch_padded_to_its_bucket_answers_only_its_own_rows(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    loaded, spec = mnist_net
    for io_binding in (True, False):
        runner = SessionRunner(loaded.session, spec, RunPlan(io_binding=io_binding, buckets=(4, 8)), instances=1)
        runner.run(digits_like(8, spec, seed=3))  # fills the size-8 buffer; a later batch of 5 must not see it
        batch = digits_like(5, spec, seed=4)
        outputs = runner.run(batch)
        assert outputs.shape == (5, 10)
        np.testing.assert_allclose(outputs, reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)


def test_the_requests_of_a_batch_are_copied_straight_into_the_kept_buffer(
    mnist_net: tuple[LoadedSession, ModelSpec],
) -> None:
    loaded, spec = mnist_net
    parts = [digits_like(rows, spec, seed) for seed, rows in enumerate([2, 1, 3])]
    batch = np.concatenate(parts)
    for plan in (RunPlan(), RunPlan(buckets=(8,)), RunPlan(io_binding=False, buckets=(8,))):
        runner = SessionRunner(loaded.session, spec, plan, instances=1)
        np.testing.assert_allclose(runner.run_parts(parts), reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)


def test_warm_up_runs_every_bucket_whatever_sizes_were_asked_for(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    loaded, spec = mnist_net
    buckets = (1, 2, 4, 8, 16, 32)
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=buckets), instances=1)
    assert runner.warm_up({1, 32}) == buckets
    unbucketed = SessionRunner(loaded.session, spec, RunPlan(), instances=1)
    assert unbucketed.warm_up({32, 1, 8}) == (1, 8, 32)


def test_warm_up_runs_every_bucket_and_on_the_cpu_the_sizes_batches_come_in_most() -> None:
    batching = BatchingSettings(max_batch_size=8, preferred_batch_sizes=(4,))
    assert warm_up_sizes(RunPlan(device="cpu"), batching) == {1, 4, 8}
    assert warm_up_sizes(RunPlan(device="cuda", buckets=(8,)), batching) == {8}
    assert warm_up_sizes(RunPlan(device="cuda", buckets=(2, 8)), batching) == {2, 8}


def test_the_cuda_graph_run_options_change_nothing_on_the_cpu(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    """The graph ids ride on run options that only the CUDA provider reads; the rest of the path runs here."""
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(2, 4), cuda_graphs=True), instances=1)
    assert runner.warm_up({1}) == (2, 4)
    batch = digits_like(3, spec, seed=5)
    np.testing.assert_allclose(runner.run(batch), reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)
    assert runner.run_output(batch, spec.output_name or "output").shape == (3, 10)


def threads_of_bound_runs(runner: SessionRunner) -> list[str]:
    """The names of the threads `runner`'s bound runs happen on, from now on, in order (a wrapper that notes the
    thread, then runs as before)."""
    bound_run = runner._run_parts
    threads: list[str] = []

    def noting_the_thread(parts: list[np.ndarray]) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return bound_run(parts)

    runner._run_parts = noting_the_thread  # type: ignore[method-assign]
    return threads


def test_with_cuda_graphs_every_bound_run_happens_on_the_one_graph_thread(
    mnist_net: tuple[LoadedSession, ModelSpec],
) -> None:
    """ONNX Runtime replays a CUDA graph only in the thread that captured it, so the warm-up and every batch run on
    the runner's graph thread, whichever thread asks; plain calls (Explain's) run where they are made. On the CPU
    nothing is captured, but the threads are the same."""
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(2, 4), cuda_graphs=True), instances=1)
    threads = threads_of_bound_runs(runner)
    try:
        assert runner.warm_up({1}) == (2, 4)
        batch = digits_like(3, spec, seed=7)
        answers: list[np.ndarray] = []
        other = threading.Thread(target=lambda: answers.append(runner.run(batch)), name="some-caller")
        other.start()
        other.join(10)
        answers.append(runner.run(batch))
        for answer in answers:
            np.testing.assert_allclose(answer, reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)
        assert len(threads) == 2 * CAPTURE_RUNS + 2
        assert len(set(threads)) == 1 and threads[0].startswith("cuda-graphs"), threads
        assert runner.run_output(batch, spec.output_name or "output").shape == (3, 10)
        assert len(threads) == 2 * CAPTURE_RUNS + 2, "a plain call went through the bound path"
    finally:
        runner.close()
    assert runner.graph_thread is not None
    with pytest.raises(RuntimeError, match="shutdown"):
        runner.graph_thread.submit(time.monotonic)


def test_without_cuda_graphs_batches_run_on_the_callers_thread(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(4,)), instances=1)
    assert runner.graph_thread is None
    threads = threads_of_bound_runs(runner)
    runner.run(digits_like(2, spec, seed=1))
    assert threads == [threading.current_thread().name]
    runner.close()


def test_instances_never_share_buffers(mnist_net: tuple[LoadedSession, ModelSpec]) -> None:
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(8,)), instances=2)
    batches = [digits_like(rows, spec, seed) for seed, rows in enumerate([3, 8, 5, 1, 7, 2])]
    expected = [reference(loaded, spec, batch) for batch in batches]
    failures: list[str] = []

    def caller(offset: int) -> None:
        for round_ in range(30):
            index = (offset + round_) % len(batches)
            if not np.allclose(runner.run(batches[index]), expected[index], rtol=1e-5, atol=1e-6):
                failures.append(f"batch {index} in round {round_}")

    threads = [threading.Thread(target=caller, args=(offset,)) for offset in (0, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_call_that_finds_every_instances_buffers_busy_gets_buffers_of_its_own(
    mnist_net: tuple[LoadedSession, ModelSpec],
) -> None:
    """In the engine, a batch run on the event loop may overlap one in a worker thread: one instance, two calls."""
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(8,)), instances=1)
    batches = [digits_like(rows, spec, seed) for seed, rows in enumerate([3, 8, 5])]
    expected = [reference(loaded, spec, batch) for batch in batches]
    failures: list[int] = []

    def caller() -> None:
        for round_ in range(40):
            index = round_ % len(batches)
            if not np.allclose(runner.run(batches[index]), expected[index], rtol=1e-5, atol=1e-6):
                failures.append(index)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_uint8_and_fixed_batch_graphs_run_bound_as_well(imported: Path) -> None:
    for name in ("pixels_uint8", "fixed_batch"):
        loaded, spec = opened(imported / name)
        plan = resolve_plan(BatchingSettings(max_batch_size=8), ON_CPU, loaded.provider, spec.batch_dim)
        runner = SessionRunner(loaded.session, spec, plan, instances=1)
        runner.warm_up({1})
        shape = spec.preprocessing.input_shape
        rows = 1 if spec.batch_dim == 1 else 3
        batch = np.random.default_rng(0).uniform(0, 255, (rows, *shape)).astype(np.float32)  # float32 to uint8
        np.testing.assert_allclose(runner.run(batch), reference(loaded, spec, batch), rtol=1e-5, atol=1e-6)


def test_the_run_plan_follows_the_settings_and_the_provider_got() -> None:
    batching = BatchingSettings(max_batch_size=24)
    graphs = RuntimeSettings(cuda_graphs=True)
    assert resolve_plan(batching, RuntimeSettings(), CUDA, None).buckets == (24,), (
        "on CUDA every batch runs at one shape: a change of shape makes cuDNN choose its algorithms again"
    )
    assert resolve_plan(batching, graphs, CUDA, None).buckets == (24,)
    assert resolve_plan(batching, RuntimeSettings(io_binding=False), CUDA, None).buckets == (24,)
    assert resolve_plan(batching, RuntimeSettings(), CPU, None).buckets == (), "the CPU binds every size in one array"
    assert resolve_plan(batching, graphs, CUDA, None).cuda_graphs
    on_cpu = resolve_plan(batching, graphs, CPU, None)
    assert (on_cpu.cuda_graphs, on_cpu.buckets, on_cpu.device) == (False, (), "cpu"), "CUDA graphs need CUDA"
    assert resolve_plan(batching, RuntimeSettings(), CPU, 1).buckets == (1,), "a fixed batch is the one bucket"
    chosen = BatchingSettings(max_batch_size=24, batch_buckets=(8, 24))
    assert resolve_plan(chosen, graphs, CUDA, None).buckets == (8, 24)
    with pytest.raises(ModelLoadError, match="instances = 1"):
        resolve_plan(BatchingSettings(instances=2), graphs, CUDA, None)
    assert RunPlan(buckets=(4, 8)).size_for(5) == 8
    assert RunPlan(buckets=(4, 8)).size_for(3) == 4
    assert RunPlan().size_for(3) == 3


def test_the_cost_of_a_change_of_shape_is_measured_on_the_warmed_buckets(
    mnist_net: tuple[LoadedSession, ModelSpec],
) -> None:
    loaded, spec = mnist_net
    runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(1, 8)), instances=1)
    runner.warm_up(())
    cost = runner.shape_change_cost()
    assert cost is not None and cost.repeated > 0 and cost.after_a_change > 0
    one_shape = SessionRunner(loaded.session, spec, RunPlan(buckets=(8,)), instances=1)
    assert one_shape.shape_change_cost() is None, "one shape never changes"
    assert SessionRunner(loaded.session, spec, RunPlan(), instances=1).shape_change_cost() is None


def test_a_change_of_shape_is_costly_when_it_adds_a_millisecond_and_four_runs() -> None:
    assert ShapeChangeCost(repeated=0.0002, after_a_change=0.025).is_costly(), "the H200's cuDNN search"
    assert not ShapeChangeCost(repeated=0.0002, after_a_change=0.0009).is_costly(), "under a millisecond more"
    assert not ShapeChangeCost(repeated=0.004, after_a_change=0.010).is_costly(), "a large run, under 4x"


def test_a_version_with_several_buckets_times_a_change_of_shape_and_stays_quiet_when_it_is_cheap(
    mnist_net: tuple[LoadedSession, ModelSpec], caplog: pytest.LogCaptureFixture
) -> None:
    """What a CUDA version does after its warm-up (only on CUDA in the server; the CPU's changes cost nothing)."""
    loaded, spec = mnist_net
    version = ModelVersion("mnist_net", 1, Path("unused"))
    version.runner = SessionRunner(loaded.session, spec, RunPlan(buckets=(1, 8)), instances=1)
    version.runner.warm_up(())
    with caplog.at_level(logging.WARNING, logger="cnnserve.server.model"):
        version._warn_of_costly_shape_changes()
    assert not [record for record in caplog.records if "change of batch shape" in record.getMessage()]
