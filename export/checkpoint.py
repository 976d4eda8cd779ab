"""Checkpoints as the PyTorch references write them: one dict with model, optimizer, scheduler, epoch, args.

``args`` holds the run's settings (model name, seed, data folder, recipe) so `cnnserve export` can rebuild the
model and the exact test split from the checkpoint alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

BEST_CHECKPOINT = "best.pt"
"""Lowest validation loss so far: what gets exported."""
LAST_CHECKPOINT = "last.pt"
"""The end of the latest epoch: what --resume continues from."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves a half-written checkpoint behind."""
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Raises ValueError when the file is not a cnnserve checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = {"model", "optimizer", "scheduler", "epoch", "args"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a cnnserve checkpoint (missing {', '.join(sorted(missing))})")
    return state
