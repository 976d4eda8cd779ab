"""`cnnserve train` and `cnnserve export`: argument parsing only; torch is imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .catalog import MODEL_NAMES
from .recipe import OptimizerName


def register(subcommands: argparse._SubParsersAction) -> None:
    train = subcommands.add_parser(
        "train",
        help="train a seed model and export it to ONNX",
        description="Train NAME with its recipe from the seed notes, export the best checkpoint as the next "
        "version in DIR/NAME/<version>/model.onnx and write checkpoints, history, curves and an evaluation "
        "report to the run folder.",
    )
    train.add_argument("name", metavar="NAME", choices=MODEL_NAMES, help=", ".join(MODEL_NAMES))
    _add_common(train)
    train.add_argument("--epochs", type=int, help="default: the model's recipe")
    train.add_argument(
        "--data-dir",
        type=Path,
        help="MNIST/Fashion-MNIST IDX files or a folder with one subfolder per class "
        "(default: generated X/O glyphs for xo, scikit-learn digits for the MNIST models)",
    )
    train.add_argument(
        "--labels",
        type=lambda text: tuple(label.strip() for label in text.split(",")),
        help="comma-separated class names for IDX data that is not digits (e.g. Fashion-MNIST)",
    )
    train.add_argument("--seed", type=int, default=1, help="default: 1")
    train.add_argument("--batch-size", type=int, help="default: the model's recipe")
    train.add_argument("--lr", type=float, help="learning rate; default: the model's recipe")
    train.add_argument("--optimizer", choices=[o.value for o in OptimizerName], help="default: the recipe")
    train.add_argument("--patience", type=int, help="early-stopping patience in epochs; 0 turns it off")
    train.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, help="random affine augmentation (default: recipe)"
    )
    train.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="continue from a last.pt")
    train.add_argument("--threads", type=int, help="torch threads (default: all cores, at most 4)")
    train.set_defaults(run=_run_train)

    export = subcommands.add_parser(
        "export",
        help="export a training checkpoint to ONNX without training",
        description="Turn a checkpoint written by `cnnserve train` into the next repository version.",
    )
    export.add_argument("name", metavar="NAME", choices=MODEL_NAMES, help=", ".join(MODEL_NAMES))
    export.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt from a run folder")
    _add_common(export)
    export.add_argument("--data-dir", type=Path, help="the run's data folder, if it has moved")
    export.set_defaults(run=_run_export)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--int8", action="store_true", help="also store a dynamic-int8 variant as NAME_int8 and compare it"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="model repository root")
    parser.add_argument("--run-dir", type=Path, help="checkpoints, history, plots and report (default: runs/NAME)")


def _run_train(args: argparse.Namespace) -> int:
    from .pipeline import TrainSettings, train_and_export

    outcome = train_and_export(
        TrainSettings(
            model=args.name,
            out_dir=args.out,
            run_dir=args.run_dir,
            data_dir=args.data_dir,
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            optimizer=OptimizerName(args.optimizer) if args.optimizer else None,
            early_stopping_patience=args.patience,
            augment=args.augment,
            labels=args.labels,
            int8=args.int8,
            resume=args.resume,
            threads=args.threads,
        )
    )
    _print_outcome(outcome)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .pipeline import export_checkpoint

    outcome = export_checkpoint(
        args.checkpoint,
        args.out,
        run_dir=args.run_dir,
        data_dir=args.data_dir,
        expected_model=args.name,
        int8=args.int8,
    )
    _print_outcome(outcome)
    return 0


def _print_outcome(outcome) -> None:
    report = outcome.report
    print(
        f"{report.model}: test accuracy {report.pytorch_accuracy:.4f} (ONNX {report.onnx_accuracy:.4f}) "
        f"on {report.test_images} images; trained {report.training_seconds:.1f}s; wrote {outcome.model_path}"
    )
