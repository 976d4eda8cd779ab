"""Logging set-up for the `cnnserve` command line: text lines or JSON lines on stderr.

Every subcommand (the server's, the client's, training and export, the benchmark) logs the same way, so this
lives beside the command line rather than in one role's package. The library itself never configures logging,
on import or otherwise: only `cnnserve.cli` calls `configure_logging`, with the format from `--log-format` or
CNNSERVE_LOG_FORMAT. In JSON format every record is one JSON object per line; log calls that pass a mapping as
their argument (`log.info("... %(model)s", {"model": name})`) get its keys as fields too.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED_FIELDS = frozenset({"time", "level", "logger", "message", "exception", "stack"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, mapping arguments, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if isinstance(record.args, Mapping):
            entry.update((key, value) for key, value in record.args.items() if key not in _RESERVED_FIELDS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send log records at `level` and above to stderr, as text lines or JSON lines ("text" or "json").

    Replaces any handlers the root logger had. Raises ValueError for another format, naming the accepted ones.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
