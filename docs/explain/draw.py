"""Draw docs/explain/explanations.png: what `cnnserve explain` returns for a digit, an X and an O.

    python docs/explain/draw.py --model-repository MODELS [--out docs/explain/explanations.png]

MODELS must hold `mnist_net` and `xo` (`make models`, or `cnnserve.export.build_model`). It starts a server on
loopback, asks it for occlusion and RISE overlays (the same calls as `cnnserve explain --png`) and lays them out
in one picture, each under its method, label and probability.
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
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("explanations.png"))
    args = parser.parse_args(argv)
    digits, _ = load_digit_images()
    cases = [
        ("mnist_net", digits[0], "occlusion", {}),
        ("mnist_net", digits[0], "rise", {"masks": 1000}),
        ("xo", render_x(), "occlusion", {}),
        ("xo", render_o(), "rise", {"cells": 9, "masks": 1000}),
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
    sheet = Image.new("RGB", (len(tiles) * (TILE + 8) + 8, TILE + CAPTION + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for position, (overlay, caption) in enumerate(tiles):
        left = 8 + position * (TILE + 8)
        sheet.paste(overlay, (left, CAPTION))
        draw.text((left, 10), caption, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
