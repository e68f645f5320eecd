"""Writes samples/shapes/: 36 small pictures (3 kinds x 12) for the README's first command.

Generated, not photographed, so the project may redistribute them and anyone can rebuild them
bit for bit from this script: `python samples/make_shapes.py`. Each kind has its own folder and
the same file names (`circles/00.png`, `squares/00.png`, ...), as many real datasets do.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, ImageDraw

SIZE = 96
KINDS = ("circles", "squares", "stripes")
PER_KIND = 12
HERE = pathlib.Path(__file__).resolve().parent / "shapes"


def draw(kind: str, index: int) -> Image.Image:
    rng = np.random.default_rng([KINDS.index(kind), index])
    background = tuple(int(v) for v in rng.integers(170, 256, 3))
    colour = tuple(int(v) for v in rng.integers(0, 140, 3))
    img = Image.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(img)
    if kind == "stripes":
        width = int(rng.integers(4, 12))
        for x in range(int(rng.integers(0, width)), SIZE, 2 * width):
            pen.rectangle((x, 0, x + width - 1, SIZE), fill=colour)
        return img.rotate(float(rng.uniform(-40, 40)), fillcolor=background)
    radius = int(rng.integers(16, 36))
    cx, cy = (int(v) for v in rng.integers(radius, SIZE - radius, 2))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    (pen.ellipse if kind == "circles" else pen.rectangle)(box, fill=colour)
    return img


def main() -> None:
    for kind in KINDS:
        (HERE / kind).mkdir(parents=True, exist_ok=True)
        for index in range(PER_KIND):
            draw(kind, index).save(HERE / kind / f"{index:02d}.png", optimize=False)


if __name__ == "__main__":
    main()
