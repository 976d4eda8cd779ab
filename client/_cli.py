"""`cnnserve classify`, `cnnserve explain`, `cnnserve models` and `cnnserve health`: argument parsing only; the
commands themselves are in `_commands` and imported when one runs.

Exit codes, the same for every command, so scripts can branch on them:
  0  done: every image classified (classify), the map made and its files written (explain), the list printed
     (models), the server is SERVING (health)
  1  some images could not be classified (or the image could not be explained) because of the images
     (unreadable, not an image, wrong shape) or of what was asked for them (explain: an unknown label, more
     forward passes than allowed), or the server answered health with another status than SERVING
  2  usage error (bad flags, no images found, an output file that cannot be written)
  3  the server could not be reached or refused the work (unknown model, overloaded, timed out, not authorised)
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Callable
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:8001"
DEFAULT_TIMEOUT = 30.0
EXPLAIN_TIMEOUT = 60.0
"""explain's deadline: an explanation is hundreds of forward passes, which yield to every classification."""


class ExitCode(enum.IntEnum):
    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    SERVER_ERROR = 3


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connection = _connection_flags()

    classify = subcommands.add_parser(
        "classify",
        parents=[connection],
        help="classify image files or folders with a running server",
        description="Classify images with a running server: one line per image (or one JSON object with --json), "
        "a progress bar on a terminal, and a summary. Exit codes: 0 all classified, 1 some images failed, "
        "2 usage error, 3 server unreachable or refused the work.",
    )
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (recursive)")
    classify.add_argument("--model", required=True, help="model name, as `cnnserve models` lists it")
    classify.add_argument("--top-k", type=_positive_int, default=1, help="labels per image (default 1)")
    classify.add_argument("--json", action="store_true", help="one JSON object per image per line on stdout")
    classify.add_argument("--concurrency", type=_positive_int, default=4, help="requests in flight at once (default 4)")
    classify.add_argument("--batch-size", type=_positive_int, default=16, help="images per request (default 16)")
    classify.set_defaults(run=_run("run_classify"))

    explain = subcommands.add_parser(
        "explain",
        parents=[_connection_flags(EXPLAIN_TIMEOUT)],
        help="show where a model looked in one image (a saliency map), or what a layer computed",
        description="Explain one image with a running server: a saliency map of where the model looked for a label, "
        "by occlusion (a patch slid over the image) or RISE (random masks), or one convolution layer's feature maps "
        "(activations; models exported with --activations). Prints the label, its probability, the method, the "
        "forward passes it took and the layer drawn; --npy writes the map, --png the map over the image (the "
        "feature maps with activations). Exit codes: 0 done, 1 the image (or the label, the layer, or the forward "
        "passes asked for) refused, 2 usage error, 3 server unreachable or refused the work.",
    )
    explain.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    explain.add_argument("--model", required=True, help="model name, as `cnnserve models` lists it")
    explain.add_argument("--version", type=_non_negative_int, default=0, help="model version (default: latest ready)")
    explain.add_argument("--label", help="the label to explain (default: the model's top-1 label for the image)")
    explain.add_argument(
        "--method", choices=("occlusion", "rise", "activations"), default="occlusion", help="default: occlusion"
    )
    occlusion = explain.add_argument_group("occlusion")
    occlusion.add_argument(
        "--patch",
        type=_positive_int,
        help="patch side in pixels of the image (server default: 1/7 of its shorter side)",
    )
    occlusion.add_argument("--stride", type=_positive_int, help="patch step in pixels (server default: half the patch)")
    rise = explain.add_argument_group("rise")
    rise.add_argument("--masks", type=_positive_int, help="random masks, one forward pass each (server default 500)")
    rise.add_argument("--cells", type=_positive_int, help="mask grid, CELLS x CELLS (server default 7)")
    rise.add_argument("--keep", type=_fraction, help="chance that a cell is kept, in (0, 1) (server default 0.5)")
    rise.add_argument("--seed", type=int, default=0, help="seed of the masks: the same seed, the same map (default 0)")
    activations = explain.add_argument_group("activations")
    activations.add_argument(
        "--layer", metavar="NAME", help="the layer to draw, as `cnnserve models` lists it (default: the first)"
    )
    explain.add_argument("--max-rows", type=_positive_int, help="most forward passes allowed (default: the server's)")
    explain.add_argument(
        "--png",
        type=Path,
        metavar="OUT.png",
        help="also ask for the map over the image and write it; with activations, write the feature maps",
    )
    explain.add_argument(
        "--npy",
        type=Path,
        metavar="OUT.npy",
        help="write the map (float32 [H, W]) with numpy.save; not with activations",
    )
    explain.set_defaults(run=_run("run_explain"))

    models = subcommands.add_parser(
        "models", parents=[connection], help="list the models of a running server", description="List the models."
    )
    models.add_argument("--json", action="store_true", help="one JSON object per model per line")
    models.set_defaults(run=_run("run_models"))

    health = subcommands.add_parser(
        "health",
        parents=[connection],
        help="check a running server's health (exit 0 when SERVING)",
        description="Print the server's grpc.health.v1 status. Exit 0 SERVING, 1 any other status, 3 unreachable.",
    )
    health.add_argument("--service", default="", help="a service name; default: the whole server")
    health.set_defaults(run=_run("run_health"))


def _connection_flags(timeout: float = DEFAULT_TIMEOUT) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("CNNSERVE_SERVER", DEFAULT_SERVER),
        help="gRPC target: HOST:PORT, dns:///HOST:PORT (every replica, round robin) or ipv4:A:P,B:P "
        f"(default $CNNSERVE_SERVER or {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--timeout", type=_positive_float, default=timeout, help=f"seconds per call (default {timeout:g})"
    )
    group.add_argument("--tls", action="store_true", help="use TLS, verifying the server with the system's CAs")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="use TLS, verifying the server with this CA")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key, for mutual TLS")
    group.add_argument("--tls-server-name", metavar="NAME", help="name the server's certificate must carry")
    group.add_argument(
        "--auth-token",
        default=os.environ.get("CNNSERVE_AUTH_TOKEN"),
        help="bearer token; prefer $CNNSERVE_AUTH_TOKEN (command lines are visible to other users)",
    )
    return parser


def _run(command: str) -> Callable[[argparse.Namespace], int]:
    """A runner that imports the client only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        from cnnserve.client import _commands

        return int(getattr(_commands, command)(args))

    return run


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
