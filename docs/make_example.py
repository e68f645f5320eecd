"""Regenerates docs/neighbours.png, the README's example of `featurize search --grid`.

    python docs/make_example.py

Makes 36 small pictures (six colour themes x six shapes), runs featurize on them with a
randomly initialised MobileNetV3Small (no downloads here; random features still group
by colour and layout), then draws the neighbours of one picture.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
THEMES = {"sunset": ((250, 120, 40), (90, 20, 80)), "sea": ((20, 90, 200), (200, 240, 250)),
          "forest": ((20, 110, 40), (200, 220, 120)), "night": ((10, 10, 40), (240, 230, 120)),
          "rose": ((230, 90, 150), (250, 230, 240)), "stone": ((120, 120, 120), (30, 30, 30))}


def picture(background, foreground, shape: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (96, 96), background)
    draw = ImageDraw.Draw(image)
    x, y = rng.integers(10, 40, 2)
    size = int(rng.integers(30, 50))
    box = [int(x), int(y), int(x) + size, int(y) + size]
    [draw.ellipse, draw.rectangle, lambda b, fill: draw.polygon([(b[0], b[3]), ((b[0] + b[2]) // 2, b[1]), (b[2], b[3])], fill=fill),
     lambda b, fill: draw.line(b, fill=fill, width=8), lambda b, fill: draw.chord(b, 0, 180, fill=fill),
     lambda b, fill: draw.pieslice(b, 30, 300, fill=fill)][shape](box, fill=foreground)
    return image


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="featurize-example-"))
    (work / "images").mkdir()
    for t, (name, (background, foreground)) in enumerate(THEMES.items()):
        for shape in range(6):
            picture(background, foreground, shape, 10 * t + shape).save(work / "images" / f"{name}-{shape}.png")
    featurize = [sys.executable, "-m", "pipeline"]
    subprocess.run([*featurize, "run", "--input", str(work / "images"), "--output", str(work / "out"),
                    "--model", "MobileNetV3Small", "--weights", "none", "--image-size", "96",
                    "--direct_running_mode=in_memory"], check=True)
    subprocess.run([*featurize, "search", str(work / "out"), "--query", "sea-0.png", "--k", "7",
                    "--grid", str(HERE / "neighbours.png")], check=True)


if __name__ == "__main__":
    main()
