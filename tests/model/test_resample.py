"""The resize inside the model (--resize-in model) against Pillow's own resize of the same decoded image:
the same filter, box and output rectangle, so the pixels differ only by Pillow's rounding to uint8 (after
each of its two passes, in 8-bit fixed-point coefficients), for every policy and filter."""
import numpy as np
import pytest
from PIL import Image

from pipeline.images import CANVAS_SCALE, DecodeSpec, canvas_image, resize_image, stack_for_model
from pipeline.model.resample import SUPPORTS, resample, taps

TARGET = (24, 32)  # (height, width)
# Pillow rounds to uint8 between its passes: up to 1 level, more where a filter with negative lobes overshoots.
TOLERANCE = {"box": 1.0, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 2.0}


def photo(width, height, seed=0):
    """A smooth colour image (what a photo is at this scale), not noise, whose resample Pillow rounds gently."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    channels = [127 + 100 * np.sin(x / rng.uniform(3, 9) + c) * np.cos(y / rng.uniform(3, 9) - c) for c in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


def in_model(img, spec):
    pixels, geometry = stack_for_model([canvas_image(img, spec)])
    return np.asarray(resample(pixels.astype(np.float32), geometry, TARGET, spec.interpolation))[0]


@pytest.mark.parametrize("interpolation", list(SUPPORTS))
@pytest.mark.parametrize("policy", ["squash", "center-crop", "pad"])
def test_the_models_resize_is_pillows_up_to_its_rounding(policy, interpolation):
    spec = DecodeSpec(*TARGET, resize=policy, interpolation=interpolation, resize_in="model")
    # shrinking up to the canvas (2x), a different aspect either way, growing, the target itself
    for size in [(64, 48), (33, 45), (60, 20), (11, 7), (47, 47), (32, 24)]:
        img = photo(*size)
        host = np.asarray(resize_image(img, spec), np.float32)
        difference = np.abs(in_model(img, spec) - host).max()
        assert difference <= TOLERANCE[interpolation], f"{policy} {interpolation} {size}: {difference}"


def test_an_image_past_the_canvas_is_reduced_on_the_host_first():
    """130x70 on a 64x48 canvas: reduced by 3 x 2 (Pillow's box `reduce`), then resampled as Pillow would."""
    spec = DecodeSpec(*TARGET, resize="squash", resize_in="model")
    img = photo(130, 70)
    canvas = canvas_image(img, spec)
    assert canvas.canvas == (CANVAS_SCALE * 24, CANVAS_SCALE * 32) and canvas.pixels.shape == (35, 44, 3)
    assert canvas.geometry[:2].tolist() == [35, 44]  # ceil(70 / 2), ceil(130 / 3): Pillow keeps a partial block
    host = np.asarray(resize_image(img.reduce((3, 2)), spec), np.float32)
    assert np.abs(in_model(img, spec) - host).max() <= 1.0


def test_the_window_holds_every_tap_at_the_largest_scale():
    """A pad into a 1-pixel-high strip shrinks by almost 3 on that axis; every weight Pillow uses must fit."""
    spec = DecodeSpec(*TARGET, resize="pad", interpolation="lanczos", resize_in="model")
    img = photo(64, 5)  # fitted 32x3 (rounded from 2.5): 5 / 3 rows... and 64 / 32 columns
    host = np.asarray(resize_image(img, spec), np.float32)
    assert np.abs(in_model(img, spec) - host).max() <= TOLERANCE["lanczos"]
    assert taps("lanczos") == 19 and taps("bilinear") == 7
