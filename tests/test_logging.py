"""Logging set-up for the command line (`cnnserve._logging`): text or JSON lines on stderr, and none on import.

`configure_logging` replaces the root logger's handlers, so it runs in child processes here, never in pytest's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnserve._logging import JsonFormatter, configure_logging


def python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)


def test_the_json_formatter_keeps_mapping_arguments_and_exceptions_as_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "%(what)s failed", ({"what": "it"},), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "it failed" and entry["what"] == "it"
    assert "ValueError: boom" in entry["exception"]


def test_json_logging_writes_one_object_per_record_to_stderr_at_the_level_asked() -> None:
    result = python(
        "import logging\n"
        "from cnnserve._logging import configure_logging\n"
        "configure_logging('INFO', 'json')\n"
        "logging.getLogger('cnnserve.demo').info('served %(model)s', {'model': 'xo'})\n"
        "logging.getLogger('cnnserve.demo').debug('below the level')\n"
    )
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "cnnserve.demo", "served xo")
    assert entry["model"] == "xo", "a mapping argument's keys become fields"
    assert result.stdout == ""


def test_importing_cnnserve_configures_no_logging() -> None:
    result = python(
        "import logging\n"
        "import cnnserve.cli, cnnserve.client, cnnserve.server.app, cnnserve.server.launcher\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), logging.getLevelName(root.level))\n"
    )
    assert result.stdout.split() == ["0", "WARNING"], "the library leaves logging to the application"


def test_an_unknown_log_format_is_refused_with_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", "xml")
    result = subprocess.run(
        [sys.executable, "-m", "cnnserve", "serve", "--model-repository", str(tmp_path)],
        env={**os.environ, "CNNSERVE_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "CNNSERVE_LOG_FORMAT" in result.stderr
