"""`cnnserve serve`: flags generated from ServerSettings, so every setting has its flags, environment variables
and config file keys from one declaration and they can never drift apart: `--max-batch-size`,
`CNNSERVE_MAX_BATCH_SIZE`, `max_batch_size`. A field with a shorter spelling (`--drain-timeout` for
`drain_timeout_seconds`) has it as a flag, a variable and a key too. `--config` is `CNNSERVE_CONFIG`.

Flags default to None, so only flags actually given override the environment and the config file. The server
itself (and onnxruntime) is imported only when the command runs.

`cnnserve import` and `cnnserve inspect` (server/model_import.py) bring in a model that another tool exported;
their specification flags are generated the same way, from the config.toml tables of server/model_spec.py, so a
flag and the key it writes have one name, one meaning and one default.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource

from cnnserve.repository_layout import MODEL_FILE
from cnnserve.server.settings import AUTO, BatchingFields, RuntimeSettings, ServerSettings, spellings
from cnnserve.server.spec_files import LABELS_FILE, InputTable, OutputTable, PreprocessingTable, SpecTables

CONFIG_ENVIRONMENT_VARIABLE = "CNNSERVE_CONFIG"


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="serve every model of a repository over gRPC",
        description="Serve every model of a repository over gRPC. Every flag can also be given as the environment "
        "variable CNNSERVE_<FLAG> (e.g. CNNSERVE_GRPC_PORT=8001) or as a key of the --config TOML file; flags win "
        "over the environment, which wins over the file. A model's own <name>/config.toml overrides the batching "
        "and ONNX Runtime defaults for that model.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML file of settings (keys are the flag names with _); or {CONFIG_ENVIRONMENT_VARIABLE}",
    )
    batching = parser.add_argument_group("batching, per model (a model's config.toml may override these)")
    runtime = parser.add_argument_group("ONNX Runtime, per model (a model's config.toml may override these)")
    for name, field in ServerSettings.model_fields.items():
        group = (
            batching
            if name in BatchingFields.model_fields
            else runtime
            if name in RuntimeSettings.model_fields
            else parser
        )
        names = spellings(name, field)
        flags = [f"--{spelling.replace('_', '-')}" for spelling in (*names[1:], names[0])]
        group.add_argument(
            *flags, dest=name, metavar=name.upper(), default=None, help=_help(field), **_argument_kind(field.annotation)
        )
    parser.set_defaults(run=_run)
    _register_import(subcommands)
    _register_inspect(subcommands)


def _register_import(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "import",
        help="add an ONNX classifier exported by any tool to a repository, checked",
        description="Add an ONNX image classifier that another tool exported (torch.onnx.export, tf2onnx, a model "
        f"zoo) to a repository as the next version of DIR/NAME: <version>/{MODEL_FILE}, {LABELS_FILE} and the "
        "model's specification in config.toml. What the graph says (input name, layout, size, element type, "
        "batch dimension, a final Softmax, LogSoftmax or Sigmoid, the number of classes) is read from it; the "
        "flags say the rest, or override it. Nothing is written unless the model loads in ONNX Runtime, the labels "
        "match its output, and test pictures run through the server's preprocessing in batches of one and of "
        "several. Prints the resolved specification. Exit codes: 0 imported, 1 refused (the message says why), "
        "2 usage error.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="the .onnx file to import")
    parser.add_argument(
        "--repository", type=Path, required=True, metavar="DIR", help="the model repository (an existing folder)"
    )
    parser.add_argument("--name", help="the model's name in the repository. Default: MODEL's file name without .onnx.")
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="FILE",
        help="the class names, one per line, in the order of the model's output",
    )
    _add_spec_flags(parser)
    parser.set_defaults(run=_run_import)


def _register_inspect(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "inspect",
        help="show what the server would make of an ONNX model, and what is missing",
        description="Show how the server would serve an ONNX model file, or the newest version of a repository "
        f"model folder with its config.toml and {LABELS_FILE}: every field of its specification with where it "
        "comes from (graph, embedded metadata, preset, config.toml, default), and what is missing or wrong. "
        "Writes nothing. The flags are those of `cnnserve import` and override the folder's files. Exit codes: "
        "0 servable, 1 not servable as it is, 2 usage error.",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="a .onnx file, or a repository's model folder")
    parser.add_argument(
        "--labels", type=Path, metavar="FILE", help=f"class names, one per line. Default: the folder's {LABELS_FILE}."
    )
    _add_spec_flags(parser)
    parser.set_defaults(run=_run_inspect)


_SPEC_FLAG_TABLES: tuple[tuple[str, type[InputTable | PreprocessingTable | OutputTable], str], ...] = (
    ("input", InputTable, ""),
    ("preprocessing", PreprocessingTable, ""),
    ("output", OutputTable, "output-"),
)
"""(config.toml table, its declaration, the prefix of its flags): `--size` writes [input] size, `--output-kind`
writes [output] kind."""


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
    for table, declaration, prefix in _SPEC_FLAG_TABLES:
        group = parser.add_argument_group(f"[{table}] of config.toml", declaration.__doc__)
        for name, field in declaration.model_fields.items():
            flag = f"--{prefix}{name.replace('_', '-')}"
            group.add_argument(
                flag,
                dest=f"{table}.{name}",
                default=None,
                help=field.description,
                **({"metavar": name.upper()} | _spec_argument_kind(field)),
            )


def _spec_argument_kind(field: FieldInfo) -> dict[str, Any]:
    annotation = next(a for a in typing.get_args(field.annotation) if a is not type(None))
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        spelled = [member.value for member in annotation]
        return {"metavar": "{" + ",".join("grey" if v == "L" else v for v in spelled) + "}"}
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        count: int | str = "+" if items[-1] is Ellipsis else len(items)
        return {"type": items[0], "nargs": count, "metavar": "V"}
    return {"type": annotation}


def spec_tables_from_args(args: argparse.Namespace) -> SpecTables:
    """The specification tables that the flags given set. Raises pydantic's ValidationError for bad values."""
    tables: dict[str, dict[str, Any]] = {table: {} for table, _, _ in _SPEC_FLAG_TABLES}
    for key, value in vars(args).items():
        table, _, name = key.partition(".")
        if table in tables and value is not None:
            tables[table][name] = value
    return SpecTables.model_validate(tables)


def _run_import(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cnnserve.server.model_import import ImportRefused, describe, import_model

    try:
        tables = spec_tables_from_args(args)
    except ValidationError as exc:
        print(f"cnnserve import: invalid flags:\n{exc}", file=sys.stderr)
        return 2
    name = args.name or args.model.name.removesuffix(".onnx")
    try:
        imported = import_model(args.model, args.repository, name, args.labels, tables)
    except ImportRefused as exc:
        print(f"cnnserve import: {exc}", file=sys.stderr)
        return 1
    print(f"imported {args.model} as {name} version {imported.version} in {imported.model_dir}")
    print(describe(imported.resolution))
    for note in imported.notes:
        print(f"note: {note}")
    print(f"serve it with: cnnserve serve --model-repository {args.repository}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cnnserve.server.model_import import ImportRefused, describe, inspect_model, problems_text

    try:
        tables = spec_tables_from_args(args)
    except ValidationError as exc:
        print(f"cnnserve inspect: invalid flags:\n{exc}", file=sys.stderr)
        return 2
    try:
        inspection = inspect_model(args.path, tables, args.labels)
    except ImportRefused as exc:
        print(f"cnnserve inspect: {exc}", file=sys.stderr)
        return 1
    resolution = inspection.resolution
    print(f"{inspection.model_file}:")
    print(describe(resolution))
    if resolution.problems:
        print("not servable as it is:")
        print(problems_text(resolution))
        return 1
    print("servable as shown")
    return 0


def _argument_kind(annotation: Any) -> dict[str, Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        words = tuple(word for member in members if typing.get_origin(member) is Literal for word in member.__args__)
        if words:
            return {"type": _number_or(words)}
        annotation = members[0]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is tuple:
        return {"type": typing.get_args(annotation)[0], "nargs": "*"}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"choices": [member.value for member in annotation]}
    return {"type": annotation}


def _number_or(words: tuple[str, ...]) -> Callable[[str], int | str]:
    """The argparse type of a whole-number setting that also takes `words` (`--frontends auto`)."""

    def parse(text: str) -> int | str:
        if text in words:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number or {' or '.join(words)}, got {text!r}") from None

    return parse


def _help(field: FieldInfo) -> str:
    default = field.default
    shown = getattr(default, "value", default)
    description = field.description or ""
    if field.is_required() or shown is None or shown == ():
        return description
    return f"{description}{' ' if description else ''}Default: {shown}."


def config_file(args: argparse.Namespace) -> Path | None:
    """The settings file `serve` reads: --config, else CNNSERVE_CONFIG, else none."""
    if args.config is not None:
        return args.config
    from_environment = os.environ.get(CONFIG_ENVIRONMENT_VARIABLE)
    return Path(from_environment) if from_environment else None


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from the flags given, over the environment, over the config file."""
    given = {name: getattr(args, name) for name in ServerSettings.model_fields if getattr(args, name) is not None}
    return ServerSettings.load(config_file(args), **given)


def log_format(args: argparse.Namespace) -> str:
    """The log format to configure before a command runs, so that its every line is in it.

    For `serve`, resolved as its `log_format` setting is (flag > CNNSERVE_LOG_FORMAT > config file > default);
    the other commands have neither the flag nor a config file, so CNNSERVE_LOG_FORMAT > default. The value is
    not checked here (configure_logging refuses an unknown one), and a config file that cannot be read is left
    for ServerSettings.load to report.
    """
    field = ServerSettings.model_fields["log_format"]
    serving = getattr(args, "run", None) is _run
    if serving and args.log_format is not None:
        return str(args.log_format)
    value, _, _ = EnvSettingsSource(ServerSettings).get_field_value(field, "log_format")
    path = config_file(args) if serving else None
    if value is None and path is not None:
        with contextlib.suppress(OSError, ValueError):
            value = TomlConfigSettingsSource(ServerSettings, toml_file=path)().get("log_format")
    return str(field.default if value is None else value)


def frontend_count(settings: ServerSettings) -> int:
    """The front-end processes to start: `frontends`, with auto worked out for this machine (and logged, so an
    operator sees what auto chose and why)."""
    if settings.frontends != AUTO:
        return settings.frontends
    import logging

    from cnnserve.server.supervisor import auto_frontends, nvidia_gpu_usable, usable_cpus

    cores, gpu = usable_cpus(), nvidia_gpu_usable()
    count = auto_frontends(settings, cores, gpu)
    logging.getLogger(__name__).info(
        "frontends auto: %s (%d usable cores, %s, execution provider %s; docs/architecture.md)",
        f"{count} front-end processes and an engine" if count else "one process",
        cores,
        "an NVIDIA GPU and ONNX Runtime's CUDA provider" if gpu else "no NVIDIA GPU with ONNX Runtime's CUDA provider",
        settings.execution_provider.value,
    )
    return count


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from cnnserve.server.errors import ExecutionProviderError

    try:
        settings = settings_from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"cnnserve serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    frontends = frontend_count(settings)
    settings = settings.model_copy(update={"frontends": frontends})
    if frontends > 0:
        # Not the server's own modules: they import prometheus_client, which the supervisor may import only once
        # it has set the metrics folder of every process (server/supervisor.py).
        from cnnserve.server.supervisor import supervise

        return asyncio.run(supervise(settings, frontends, args.log_level))
    from cnnserve.server.app import serve

    try:
        return asyncio.run(serve(settings))
    except ExecutionProviderError as exc:
        print(f"cnnserve serve: {exc}", file=sys.stderr)
        return 3
