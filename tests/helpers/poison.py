"""A real model made to fail on one marked input, and the images that carry the mark: what tests of
bisection (featurize run's stage, the library's ExtractFeatures) share."""
from __future__ import annotations

import numpy as np
from PIL import Image


class Poisoned(Exception):
    """What the wrapped model raises for a batch holding the marked (all-white) image."""


def poison_white_images(model):
    """`model` (a loaded FeatureModel) made to raise Poisoned on any batch holding an all-white image."""
    real_infer = model.infer

    def infer(pixels):
        if any((image == 255).all() for image in pixels):
            raise Poisoned("this image breaks the model")
        return real_infer(pixels)
    model.infer = infer
    return model


def write_images(folder, size: int, white: int | None, count: int = 10, seed: int = 4):
    """`count` random PNGs img0.png ... (never all white), the one at position `white` all white; the folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(count):
        pixels = np.full((size, size, 3), 255, np.uint8) if i == white else \
            rng.integers(0, 250, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder
