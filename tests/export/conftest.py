"""Fixtures for the export tests: one tiny real training run shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnserve.export.pipeline import RunOutcome, TrainSettings, train_and_export


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def xo_run(workspace: Path) -> RunOutcome:
    """xo trained for two epochs (about a second) and exported as version 1 of a fresh repository."""
    return train_and_export(
        TrainSettings(model="xo", out_dir=workspace / "models", run_dir=workspace / "runs" / "xo", epochs=2)
    )


def _run_cnnserve(argv: list[str]) -> int:
    """Run `cnnserve train` / `cnnserve export` as the command line does, without the other roles' commands.

    Only export's subcommands are registered, so these tests do not depend on the client and server packages.
    """
    import argparse

    from cnnserve.export import _cli

    parser = argparse.ArgumentParser(prog="cnnserve")
    _cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


@pytest.fixture(scope="session")
def cnnserve():
    """`cnnserve(["train", "xo", "--out", ...])` runs the command and returns its exit code."""
    return _run_cnnserve
