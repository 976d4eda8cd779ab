"""A model's config.toml over the server's settings: what the file sets wins, the rest is the server's, and the
merged result is checked as a whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cnnserve.server.errors import ModelLoadError
from cnnserve.server.model_config import ModelConfig
from cnnserve.server.settings import BatchingFields, ExecutionProvider, RuntimeSettings, ServerSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CNNSERVE_"):
            monkeypatch.delenv(name)


def server(tmp_path: Path, **values: Any) -> ServerSettings:
    return ServerSettings.load(model_repository=tmp_path, **values)


def config(tmp_path: Path, text: str) -> ModelConfig:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.toml").write_text(text)
    return ModelConfig.read(model_dir)


def test_without_a_config_file_a_model_gets_the_server_settings(tmp_path: Path) -> None:
    defaults = server(tmp_path, max_batch_size=64, max_queue_delay_ms=2.0, intra_op_threads=3)
    model = ModelConfig.read(tmp_path / "no-such-model")
    batching = model.batching(defaults, graph_batch_dim=None)
    assert (batching.max_batch_size, batching.max_queue_delay_ms) == (64, 2.0)
    assert model.runtime(defaults).intra_op_threads == 3


def test_the_file_overrides_the_fields_it_sets_even_with_a_default_value(tmp_path: Path) -> None:
    defaults = server(tmp_path, max_batch_size=64, max_queue_size=10, instances=2)
    model = config(tmp_path, "max_batch_size = 32\ninstances = 1\n")
    batching = model.batching(defaults, graph_batch_dim=None)
    assert (batching.max_batch_size, batching.instances) == (32, 1), "set in the file, to the built-in defaults"
    assert batching.max_queue_size == 10, "not in the file: the server's"


def test_the_queue_delay_is_in_milliseconds_in_the_file_as_in_the_flags(tmp_path: Path) -> None:
    batching = config(tmp_path, "max_queue_delay_ms = 1.5\n").batching(server(tmp_path), graph_batch_dim=None)
    assert batching.max_queue_delay_ms == 1.5
    assert batching.max_queue_delay_seconds == pytest.approx(0.0015)


def test_a_file_may_spell_a_setting_as_its_flag_does(tmp_path: Path) -> None:
    batching = config(tmp_path, "default_timeout = 4\n").batching(server(tmp_path), graph_batch_dim=None)
    assert batching.default_timeout_seconds == 4.0


def test_runtime_settings_merge_the_same_way(tmp_path: Path) -> None:
    defaults = server(tmp_path, execution_provider="cpu", intra_op_threads=3, inter_op_threads=2)
    runtime = config(tmp_path, "intra_op_threads = 1\ngraph_optimization = 'basic'\n").runtime(defaults)
    assert runtime == RuntimeSettings(
        execution_provider=ExecutionProvider.CPU, intra_op_threads=1, inter_op_threads=2, graph_optimization="basic"
    )


def test_a_file_takes_every_per_model_setting_the_server_has(tmp_path: Path) -> None:
    per_model = set(BatchingFields.model_fields) | set(RuntimeSettings.model_fields)
    assert per_model <= set(ModelConfig.model_fields)
    assert per_model <= set(ServerSettings.model_fields)


def test_a_file_lowering_max_batch_size_below_the_server_preferred_sizes_fails_the_model(tmp_path: Path) -> None:
    defaults = server(tmp_path, max_batch_size=64, preferred_batch_sizes=(16, 32))
    model = config(tmp_path, "max_batch_size = 8\n")
    with pytest.raises(
        ModelLoadError, match=r"config.toml over the server's settings.*\[16, 32\] exceed max_batch_size 8"
    ):
        model.batching(defaults, graph_batch_dim=None)


def test_a_file_with_preferred_sizes_above_its_own_max_fails_the_model(tmp_path: Path) -> None:
    model = config(tmp_path, "max_batch_size = 4\npreferred_batch_sizes = [2, 8]\n")
    with pytest.raises(ModelLoadError, match=r"\[8\] exceed max_batch_size 4"):
        model.batching(server(tmp_path), graph_batch_dim=None)


def test_a_graph_with_a_fixed_batch_caps_the_batch_and_its_preferred_sizes(tmp_path: Path) -> None:
    defaults = server(tmp_path, max_batch_size=32, preferred_batch_sizes=(4, 16))
    assert ModelConfig().batching(defaults, graph_batch_dim=8).max_batch_size == 8
    assert ModelConfig().batching(defaults, graph_batch_dim=8).preferred_batch_sizes == (4,)
    unbatched = ModelConfig().batching(defaults, graph_batch_dim=1)
    assert (unbatched.max_batch_size, unbatched.preferred_batch_sizes) == (1, ())


def test_a_malformed_file_is_a_model_load_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.toml is not a valid model config"):
        config(tmp_path, "max_batch_size = 'many'\n")
    with pytest.raises(ModelLoadError, match="not a valid model config"):
        config(tmp_path, "max_queue_delay_seconds = 0.001\n")


def test_a_model_may_run_in_fp16_with_buckets_of_its_own(tmp_path: Path) -> None:
    model = config(tmp_path, 'precision = "fp16"\nfp16_max_disagreement = 0.1\nbatch_buckets = [8, 1, 32]\n')
    runtime = model.runtime(server(tmp_path))
    assert (runtime.precision, runtime.fp16_max_disagreement, runtime.io_binding) == ("fp16", 0.1, True)
    assert model.batching(server(tmp_path), graph_batch_dim=None).batch_buckets == (1, 8, 32)
    with pytest.raises(ModelLoadError, match="batch_buckets"):
        config(tmp_path, "batch_buckets = [4]\n").batching(server(tmp_path), graph_batch_dim=None)
