"""A front-end process of a multi-process server: the gRPC services of `Server`, with the engine behind them.

Started by the supervisor (server/supervisor.py). It does everything a single-process server does for a call
(TLS, tokens, request ids, validation, decoding, preprocessing, statistics and metrics) and hands the model
input to the engine through its tensor arena (server/engine_client.py).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cnnserve.server.engine_protocol import ENDPOINT_FILE
from cnnserve.server.settings import ServerSettings

TENSOR_ARENA_BYTES = 512 * 1024 * 1024
"""Each front-end's shared tensor memory: room for its calls in flight (the largest allowed request of 256
224x224 colour images needs 154 MB). Only pages that were once used take memory."""


def run_frontend(settings: ServerSettings, run_dir: Path, index: int, log_level: str) -> None:
    """The front-end process's entry point."""
    from cnnserve._logging import configure_logging
    from cnnserve.server.app import serve
    from cnnserve.server.engine_client import EngineClient
    from cnnserve.server.supervisor import die_with_parent

    die_with_parent()
    configure_logging(log_level, settings.log_format.value)

    async def main() -> int:
        engine = EngineClient(run_dir / ENDPOINT_FILE, TENSOR_ARENA_BYTES)
        return await serve(settings, engine)

    sys.exit(asyncio.run(main()))
