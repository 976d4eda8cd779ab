"""`cnnserve train` and `cnnserve export`: argument parsing only; torch is imported when a command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnserve.repository_layout import MODEL_FILE

from .catalog import MODEL_NAMES
from .recipe import OptimizerName


def register(subcommands: argparse._SubParsersAction) -> None:
    train = subcommands.add_parser(
        "train",
        help="train a seed network on its data or yours and export it to ONNX",
        description="Train the network ARCH with its recipe from the seed notes, export the best checkpoint as "
        f"the next version in DIR/NAME/<version>/{MODEL_FILE} and write checkpoints, history, curves and an "
        "evaluation report to the run folder. With --data-dir the data decides the classes and the network's "
        "head is sized to them; images are converted and resized to the network's input.",
    )
    train.add_argument("architecture", metavar="ARCH", choices=MODEL_NAMES, help=", ".join(MODEL_NAMES))
    _add_common(train)
    train.add_argument("--epochs", type=int, help="default: the network's recipe")
    train.add_argument(
        "--data-dir",
        type=Path,
        metavar="FOLDER",
        help="a folder with one subfolder per class (the sorted subfolder names are the labels), or one with "
        "MNIST-style IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; t10k is the test set) "
        "(default: generated X/O glyphs for xo, scikit-learn digits for the MNIST networks)",
    )
    train.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one per line in class order (IDX label 0 first), e.g. export/labels/fashion-mnist.txt "
        "(default: the subfolder names, or the IDX label values)",
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
    export.add_argument("architecture", metavar="ARCH", choices=MODEL_NAMES, help=", ".join(MODEL_NAMES))
    export.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt from a run folder")
    _add_common(export, name_default="the run's", run_dir_default="the checkpoint's folder")
    export.add_argument("--data-dir", type=Path, help="the run's data folder, if it has moved")
    export.set_defaults(run=_run_export)


def _add_common(
    parser: argparse.ArgumentParser, name_default: str = "ARCH", run_dir_default: str = "runs/NAME"
) -> None:
    parser.add_argument("--name", help=f"the model's name in the repository and its metadata (default: {name_default})")
    parser.add_argument(
        "--int8", action="store_true", help="also store a dynamic-int8 variant as NAME_int8 and compare it"
    )
    parser.add_argument(
        "--activations",
        action="store_true",
        help="also output each convolution layer's feature maps (activation_conv1, ...) for the server to draw",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="model repository root")
    parser.add_argument(
        "--run-dir", type=Path, help=f"checkpoints, history, plots and report (default: {run_dir_default})"
    )


def _run_train(args: argparse.Namespace) -> int:
    from .datasets import read_class_names
    from .pipeline import TrainSettings, train_and_export

    try:
        labels = read_class_names(args.labels) if args.labels else None
        settings = TrainSettings(
            model=args.architecture,
            name=args.name,
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
            labels=labels,
            int8=args.int8,
            activations=args.activations,
            resume=args.resume,
            threads=args.threads,
        )
        outcome = train_and_export(settings)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("train", exc)
    _print_outcome(outcome)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .pipeline import export_checkpoint

    try:
        outcome = export_checkpoint(
            args.checkpoint,
            args.out,
            run_dir=args.run_dir,
            data_dir=args.data_dir,
            expected_model=args.architecture,
            name=args.name,
            int8=args.int8,
            activations=args.activations,
        )
    except (ValueError, FileNotFoundError) as exc:
        return _fail("export", exc)
    _print_outcome(outcome)
    return 0


def _fail(command: str, exc: Exception) -> int:
    """Bad settings or data (the pipeline's ValueError, a missing file): one line, exit status 2."""
    print(f"cnnserve {command}: {exc}", file=sys.stderr)
    return 2


def _print_outcome(outcome) -> None:
    report = outcome.report
    print(
        f"{report.model} ({report.architecture}, {len(report.labels)} classes): test accuracy "
        f"{report.pytorch_accuracy:.4f} (ONNX {report.onnx_accuracy:.4f}) on {report.test_images} images; "
        f"trained {report.training_seconds:.1f}s; wrote {outcome.model_path}"
    )
