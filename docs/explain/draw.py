"""Draw docs/explain/explanations.png (what `cnnserve explain` returns for a digit, an X and an O) and, with
`--activations-model`, docs/explain/activations.png (that model's feature maps of the same digit, layer by layer).

    python docs/explain/draw.py --model-repository MODELS [--activations-model NAME] [--out-dir docs/explain]

MODELS must hold `mnist_net` and `xo` (`make models`, or `cnnserve.export.build_model`), and NAME a digit model
exported with `--activations`. It starts a server on loopback, asks it for occlusion and RISE overlays and
activation grids (the same calls as `cnnserve explain --png`) and lays them out, each under what it shows.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from cnnserve.client import Client
from cnnserve.export import load_digit_images, render_o, render_x
from cnnserve.server.launcher import running_server

TILE = 256
CAPTION = 34


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--activations-model", help="a digit model exported with --activations")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    digits, _ = load_digit_images()
    cases = [
        ("mnist_net", digits[0], "occlusion", {}),
        ("mnist_net", digits[0], "rise", {"masks": 1000}),
        ("xo", render_x(), "occlusion", {}),
        ("xo", render_o(), "rise", {"masks": 1000}),
    ]
    tiles = []
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_server(args.model_repository, log_path=Path(scratch) / "server.log") as server,
        Client(server.target) as client,
    ):
        for model, picture, method, options in cases:
            explanation = client.explain(picture, model=model, method=method, overlay_png=True, **options)
            assert explanation.overlay_png is not None
            overlay = Image.open(io.BytesIO(explanation.overlay_png)).convert("RGB").resize((TILE, TILE))
            caption = f"{model}, {method}: {explanation.label} (p = {explanation.probability:.2f})"
            tiles.append((overlay, caption))
        grids = []
        if args.activations_model:
            layers = client.model(args.activations_model).activation_layers
            for layer in layers:
                explanation = client.explain(digits[0], model=args.activations_model, method="activations", layer=layer)
                assert explanation.activations_png is not None
                grid = Image.open(io.BytesIO(explanation.activations_png)).convert("RGB")
                grids.append((grid, f"{args.activations_model}, {layer} feature maps: {explanation.label}"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_sheet(tiles, args.out_dir / "explanations.png")
    if grids:
        save_sheet(grids, args.out_dir / "activations.png")
    return 0


def save_sheet(panels: list[tuple[Image.Image, str]], path: Path) -> None:
    """The panels side by side on white, each under its caption."""
    width = sum(panel.width + 8 for panel, _ in panels) + 8
    height = max(panel.height for panel, _ in panels) + CAPTION + 8
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    left = 8
    for panel, caption in panels:
        sheet.paste(panel, (left, CAPTION))
        draw.text((left, 10), caption, fill="black")
        left += panel.width + 8
    sheet.save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
