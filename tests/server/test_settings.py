"""The server's settings: every `cnnserve serve` flag is a `CNNSERVE_<FLAG>` variable and a config file key of
the same setting, precedence is flags > environment > config file > defaults, and the settings are checked when
built."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from cnnserve.server import _cli as server_cli
from cnnserve.server.runtime import cuda_options
from cnnserve.server.settings import RuntimeSettings, ServerSettings, spellings
from tests.servers import running_server


def serve_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `cnnserve` parser with only `serve` registered, and the `serve` subparser itself."""
    parser = argparse.ArgumentParser(prog="cnnserve")
    subcommands = parser.add_subparsers(dest="command", required=True)
    server_cli.register(subcommands)
    return parser, subcommands.choices["serve"]


def serve_flags() -> list[tuple[str, str]]:
    """(flag, setting) for every flag of `cnnserve serve` but --help and --config; `--no-X` stands with `--X`."""
    _, serve = serve_parser()
    return [
        (flag, action.dest)
        for action in serve._actions
        if action.dest not in ("help", "config")
        for flag in action.option_strings
        if not (isinstance(action, argparse.BooleanOptionalAction) and flag.startswith("--no-"))
    ]


def environment_variable(flag: str) -> str:
    return "CNNSERVE_" + flag.removeprefix("--").upper().replace("-", "_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CNNSERVE_* variable of the machine running the tests leaks into these settings."""
    for name in list(os.environ):
        if name.upper().startswith("CNNSERVE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Existing files and folders for the path settings: two repositories, TLS files, a token file."""
    made = {name: tmp_path / name for name in ("repository", "other_repository")}
    for folder in made.values():
        folder.mkdir()
    for name in ("cert.pem", "key.pem", "other_cert.pem", "other_key.pem", "ca.pem", "tokens.txt"):
        made[name] = tmp_path / name
        made[name].write_text("x\n")
    return made


@pytest.fixture
def base_config(files: dict[str, Path]) -> dict[str, Any]:
    """Config file values every case starts from: a repository and TLS, so that each TLS setting is valid alone."""
    return {
        "model_repository": files["repository"],
        "tls_cert_file": files["cert.pem"],
        "tls_key_file": files["key.pem"],
    }


def sample(name: str, files: dict[str, Path]) -> Any:
    """A valid value of setting `name` that is not its default (nor the base config's)."""
    special: dict[str, Any] = {
        "model_repository": files["other_repository"],
        "host": "0.0.0.0",
        "tls_cert_file": files["other_cert.pem"],
        "tls_key_file": files["other_key.pem"],
        "tls_client_ca_file": files["ca.pem"],
        "auth_token_file": files["tokens.txt"],
        "auth_tokens": "token-a,token-b",
        "port_file": files["repository"].parent / "ports.json",
        "preferred_batch_sizes": (2, 4),
        "required_models": ("xo", "mnist_net"),
        "batch_buckets": (4, 32),
        "fp16_max_disagreement": 0.25,
        "frontends": 3,
    }
    if name in special:
        return special[name]
    default = ServerSettings.model_fields[name].default
    if isinstance(default, bool):
        return not default
    if isinstance(default, Enum):
        return next(member for member in type(default) if member != default)
    if isinstance(default, int | float):
        return default + (1 if isinstance(default, int) else 1.5)
    raise AssertionError(f"no sample value for setting {name!r}; add one")


def as_flag(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag.removeprefix('--')}"]
    if isinstance(value, tuple):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def as_variable(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def as_toml(values: dict[str, Any]) -> str:
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, tuple):
            return json.dumps(list(value))
        return json.dumps(str(value))

    return "".join(f"{key} = {literal(value)}\n" for key, value in values.items())


def value_of(settings: ServerSettings, name: str) -> Any:
    value = getattr(settings, name)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def write_config(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(as_toml(values))
    return path


def test_every_setting_has_a_flag_and_every_flag_a_setting() -> None:
    assert {setting for _, setting in serve_flags()} == set(ServerSettings.model_fields)


@pytest.mark.parametrize(("flag", "setting"), serve_flags())
def test_each_flag_and_its_environment_variable_set_the_same_setting(
    flag: str,
    setting: str,
    files: dict[str, Path],
    base_config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser, _ = serve_parser()
    config = write_config(tmp_path / "settings.toml", base_config)
    value = sample(setting, files)

    from_flag = server_cli.settings_from_args(
        parser.parse_args(["serve", "--config", str(config), *as_flag(flag, value)])
    )
    assert value_of(from_flag, setting) == value

    monkeypatch.setenv(environment_variable(flag), as_variable(value))
    from_environment = server_cli.settings_from_args(parser.parse_args(["serve", "--config", str(config)]))
    assert value_of(from_environment, setting) == value, f"{environment_variable(flag)} does not set {setting}"


@pytest.mark.parametrize(
    ("key", "setting"),
    [(key, name) for name, field in ServerSettings.model_fields.items() for key in spellings(name, field)],
)
def test_each_setting_given_only_in_the_config_file_takes_effect(
    key: str, setting: str, files: dict[str, Path], base_config: dict[str, Any], tmp_path: Path
) -> None:
    value = sample(setting, files)
    values = {name: given for name, given in base_config.items() if name != setting} | {key: value}
    settings = ServerSettings.load(write_config(tmp_path / "settings.toml", values))
    assert value_of(settings, setting) == value


def test_the_config_file_can_be_named_by_cnnserve_config(
    base_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser, _ = serve_parser()
    config = write_config(tmp_path / "settings.toml", base_config | {"max_queue_size": 77})
    monkeypatch.setenv(environment_variable("--config"), str(config))
    assert server_cli.settings_from_args(parser.parse_args(["serve"])).max_queue_size == 77


def test_flags_win_over_the_environment_over_the_file_over_the_defaults_whatever_the_spelling(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser, _ = serve_parser()
    config = write_config(tmp_path / "settings.toml", {"model_repository": files["repository"], "drain_timeout": 1})

    def drain_timeout(*flags: str) -> float:
        return server_cli.settings_from_args(parser.parse_args(["serve", *flags])).drain_timeout_seconds

    assert drain_timeout("--model-repository", str(files["repository"])) == 20.0
    assert drain_timeout("--config", str(config)) == 1.0
    monkeypatch.setenv("CNNSERVE_DRAIN_TIMEOUT_SECONDS", "2")
    assert drain_timeout("--config", str(config)) == 2.0
    assert drain_timeout("--config", str(config), "--drain-timeout", "3") == 3.0


def test_frontends_take_a_count_or_auto_in_every_spelling(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, _ = serve_parser()
    repository = ["--model-repository", str(files["repository"])]
    assert server_cli.settings_from_args(parser.parse_args(["serve", *repository])).frontends == "auto"
    assert server_cli.settings_from_args(parser.parse_args(["serve", *repository, "--frontends", "0"])).frontends == 0
    config = write_config(tmp_path / "settings.toml", {"model_repository": files["repository"], "frontends": 2})
    assert server_cli.settings_from_args(parser.parse_args(["serve", "--config", str(config)])).frontends == 2
    monkeypatch.setenv("CNNSERVE_FRONTENDS", "auto")
    assert server_cli.settings_from_args(parser.parse_args(["serve", "--config", str(config)])).frontends == "auto"

    with pytest.raises(SystemExit):
        parser.parse_args(["serve", *repository, "--frontends", "many"])
    assert "expected a whole number or auto, got 'many'" in capsys.readouterr().err
    with pytest.raises(ValidationError, match="frontends"):
        ServerSettings(model_repository=files["repository"], frontends=-1)


@pytest.mark.parametrize(
    "values",
    [
        {"preferred_batch_sizes": (16, 64)},
        {"max_batch_size": 8, "preferred_batch_sizes": (16,)},
    ],
)
def test_a_preferred_batch_size_above_the_max_batch_size_is_refused(values: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"preferred_batch_sizes \[\d+\] exceed max_batch_size"):
        ServerSettings.load(model_repository=tmp_path, **values)


def test_other_inconsistent_settings_are_refused_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="default_priority_level 3 exceeds priority_levels 2"):
        ServerSettings.load(model_repository=tmp_path, priority_levels=2, default_priority_level=3)
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServerSettings.load(model_repository=tmp_path, max_batch_size=0)
    with pytest.raises(ValueError, match="does not exist"):
        ServerSettings.load(tmp_path / "missing.toml", model_repository=tmp_path)


def test_settings_cuda_graphs_cannot_run_with_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cuda_graphs needs instances = 1, not 2"):
        ServerSettings.load(model_repository=tmp_path, cuda_graphs=True, instances=2)
    with pytest.raises(ValidationError, match="cuda_graphs needs io_binding"):
        ServerSettings.load(model_repository=tmp_path, cuda_graphs=True, io_binding=False)
    assert ServerSettings.load(model_repository=tmp_path, cuda_graphs=True).cuda_graphs


def test_batch_buckets_must_hold_a_full_batch(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"the largest of batch_buckets \[4, 16\] is below max_batch_size 32"):
        ServerSettings.load(model_repository=tmp_path, batch_buckets=(16, 4))
    assert ServerSettings.load(model_repository=tmp_path, batch_buckets=(32, 4, 4)).batch_buckets == (4, 32)


def test_cuda_provider_options_follow_the_settings() -> None:
    options = cuda_options(
        RuntimeSettings(
            cuda_device_id=1, cudnn_conv_algo_search="heuristic", cuda_graphs=True, cuda_memory_limit_bytes=2**30
        )
    )
    assert options == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "0",
        "enable_cuda_graph": "1",
        "gpu_mem_limit": str(2**30),
    }
    assert cuda_options(RuntimeSettings(cuda_tf32=True)) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "use_tf32": "1",
    }


def test_preferred_batch_sizes_are_sorted_once(tmp_path: Path) -> None:
    settings = ServerSettings.load(model_repository=tmp_path, preferred_batch_sizes=(8, 2, 8, 4))
    assert settings.preferred_batch_sizes == (2, 4, 8)


def test_log_format_from_the_config_file_formats_the_logs(model_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / "xo", repository / "xo")
    config = write_config(tmp_path / "settings.toml", {"log_format": "json"})
    with running_server(repository, "--config", str(config), workdir=tmp_path) as server:
        pass
    lines = server.log().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(record["message"].startswith("ready") for record in records)
    assert not [line for line in lines if " INFO cnnserve" in line], "no line in the text format"


def test_the_log_format_is_resolved_like_every_setting(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser, _ = serve_parser()
    config = write_config(tmp_path / "settings.toml", {"model_repository": files["repository"], "log_format": "json"})
    assert server_cli.log_format(parser.parse_args(["serve"])) == "text"
    assert server_cli.log_format(parser.parse_args(["serve", "--config", str(config)])) == "json"
    monkeypatch.setenv("CNNSERVE_LOG_FORMAT", "text")
    assert server_cli.log_format(parser.parse_args(["serve", "--config", str(config)])) == "text"
    assert server_cli.log_format(parser.parse_args(["serve", "--log-format", "json"])) == "json"


def test_the_gil_switch_interval_is_set_for_the_process_only_when_asked(tmp_path: Path) -> None:
    before = sys.getswitchinterval()
    try:
        ServerSettings(model_repository=tmp_path).apply_to_interpreter()
        assert sys.getswitchinterval() == before, "0 keeps Python's own"
        ServerSettings(model_repository=tmp_path, gil_switch_interval_ms=0.5).apply_to_interpreter()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
