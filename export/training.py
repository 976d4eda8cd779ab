"""The training loop of the notes: epochs over shuffled batches, validation after each, and the habits that
keep a run honest and repeatable.

`fit` checkpoints the lowest validation loss (model and optimizer state), decays the learning rate when
validation loss stalls, stops early when it stops improving, writes a history after every epoch and can resume
from its last checkpoint. All data lives in memory as tensors (the seed data sets are small), and batch order
comes from a seeded generator saved in the checkpoint, so a resumed run continues as an unbroken one would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from .objective import Objective
from .recipe import OptimizerName, TrainingRecipe

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
PROGRESS_SECONDS = 20.0
"""A long epoch (real data on a CPU) says how far it is at most this often, between the per-epoch lines."""
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TensorSet:
    """Model inputs (N, C, H, W) float32 and labels (N,) int64."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float


@dataclass(frozen=True)
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_checkpoint: Path
    stopped_early: bool
    seconds: float


def make_optimizer(model: nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(
            params, lr=recipe.learning_rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer is OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    # Keras' RMSprop: rho 0.9, epsilon 1e-7.
    return torch.optim.RMSprop(params, lr=recipe.learning_rate, alpha=0.9, eps=1e-7, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainingRecipe):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.lr_decay_factor, patience=recipe.lr_decay_patience
    )


def train_one_epoch(
    model: nn.Module,
    data: TensorSet,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    progress_seconds: float | None = PROGRESS_SECONDS,
) -> EpochStats:
    """One pass over ``data`` in seeded random order; logs progress every ``progress_seconds`` (None: never)."""
    model.train()
    order = torch.randperm(len(data), generator=generator)
    total_loss, correct = 0.0, 0
    started = last_report = time.monotonic()
    for start in range(0, len(data), batch_size):
        batch = order[start : start + batch_size]
        inputs, labels = data.inputs[batch], data.labels[batch]
        if augment is not None:
            inputs = augment(inputs, generator)
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs)
        loss = objective.loss(outputs, labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
        correct += int((objective.predict(outputs) == labels).sum())
        now = time.monotonic()
        if progress_seconds is not None and now - last_report >= progress_seconds:
            done = start + len(batch)
            logger.info(
                "  %d/%d images  train loss %.4f acc %.4f  %.0f images/s",
                done,
                len(data),
                total_loss / done,
                correct / done,
                done / (now - started),
            )
            last_report = now
    return EpochStats(total_loss / len(data), correct / len(data))


@torch.no_grad()
def predict_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Eval-mode outputs for all ``inputs``, in batches to bound memory."""
    model.eval()
    return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def evaluate(model: nn.Module, data: TensorSet, objective: Objective) -> EpochStats:
    outputs = predict_outputs(model, data.inputs)
    loss = objective.loss(outputs, data.labels).item()
    accuracy = (objective.predict(outputs) == data.labels).float().mean().item()
    return EpochStats(loss, accuracy)


def fit(
    model: nn.Module,
    recipe: TrainingRecipe,
    train: TensorSet,
    validation: TensorSet,
    run_dir: Path,
    *,
    seed: int,
    args: dict[str, Any],
    resume: Path | None = None,
    augment: Augment | None = None,
) -> FitResult:
    """Train for up to ``recipe.epochs`` epochs; returns where the best (lowest validation loss) model is.

    ``args`` is stored in every checkpoint. With ``resume`` (a checkpoint from this function) training continues
    after its epoch with its optimizer, scheduler, history and batch-order state.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    objective = Objective(recipe.loss)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    best_loss, best_epoch, stale_epochs, first_epoch = float("inf"), 0, 0, 1
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history = [EpochRecord(**record) for record in state["history"]]
        best_loss, best_epoch = state["best_val_loss"], state["best_epoch"]
        stale_epochs, first_epoch = state["stale_epochs"], state["epoch"] + 1
        logger.info("resuming from %s after epoch %d", resume, state["epoch"])
    started = time.monotonic()
    stopped_early = False
    for epoch in range(first_epoch, recipe.epochs + 1):
        epoch_start = time.monotonic()
        learning_rate = optimizer.param_groups[0]["lr"]
        trained = train_one_epoch(model, train, objective, optimizer, recipe.batch_size, generator, augment)
        validated = evaluate(model, validation, objective)
        scheduler.step(validated.loss)
        record = EpochRecord(
            epoch,
            trained.loss,
            trained.accuracy,
            validated.loss,
            validated.accuracy,
            learning_rate,
            time.monotonic() - epoch_start,
        )
        history.append(record)
        stale_epochs = 0 if validated.loss < best_loss - recipe.early_stopping_min_delta else stale_epochs + 1
        improved = validated.loss < best_loss
        if improved:
            best_loss, best_epoch = validated.loss, epoch
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "args": args,
            "generator": generator.get_state(),
            "history": [asdict(r) for r in history],
            "best_val_loss": best_loss,
            "best_epoch": best_epoch,
            "stale_epochs": stale_epochs,
        }
        save_checkpoint(run_dir / LAST_CHECKPOINT, state)
        if improved:
            save_checkpoint(run_dir / BEST_CHECKPOINT, state)
        (run_dir / HISTORY_FILE).write_text(json.dumps([asdict(r) for r in history], indent=1))
        logger.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2g  %.1fs%s",
            epoch,
            recipe.epochs,
            trained.loss,
            trained.accuracy,
            validated.loss,
            validated.accuracy,
            learning_rate,
            record.seconds,
            "  (best)" if improved else "",
        )
        if recipe.early_stopping_patience and stale_epochs >= recipe.early_stopping_patience:
            logger.info("early stop: no better validation loss for %d epochs", stale_epochs)
            stopped_early = True
            break
    return FitResult(history, best_epoch, run_dir / BEST_CHECKPOINT, stopped_early, time.monotonic() - started)
