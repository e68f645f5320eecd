"""The resize to the model's input inside the compiled model (`--resize-in model`): each image of a batch of
canvases (`pipeline.images.Canvas`) resampled from its box to its output rectangle, with Pillow's filters and
Pillow's coefficient arithmetic (`ImagingResample`: a filter's support widened by the scale when shrinking,
so it antialiases; window and normalisation per output pixel), in float32 and without Pillow's rounding to
uint8 between its two passes. Separable: a gather of a few rows per output row, then of columns.

Keras ops only (any backend), imported inside the function: the model room loads Keras inside functions.
Every shape is static (the canvas, the output, the number of taps), so one compiled graph serves every
image size, with XLA too.
"""
from __future__ import annotations

import math

# Pillow's filters (src/libImaging/Resample.c): support, and the function of an offset in input pixels.
SUPPORTS: dict[str, float] = {"box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}
# A canvas image is shrunk by at most 3 (pipeline.images.canvas_image): a window holds at most
# floor(2 x support x 3) + 1 input pixels.
MAX_SCALE = 3


def taps(interpolation: str) -> int:
    """Input pixels read per output pixel and axis."""
    return math.floor(2 * SUPPORTS[interpolation] * MAX_SCALE) + 1


def _filter(ops, interpolation: str, x):
    if interpolation == "box":
        return ops.cast((x > -0.5) & (x <= 0.5), x.dtype)  # Pillow: -0.5 < x <= 0.5
    x = ops.abs(x)
    if interpolation == "bilinear":
        return ops.maximum(1.0 - x, 0.0)
    if interpolation == "bicubic":  # a = -0.5, as Pillow
        a = -0.5
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return ops.where(x < 1.0, near, ops.where(x < 2.0, far, 0.0))
    safe = ops.where(x == 0.0, 1.0, x)  # sin(pi x) / (pi x) is 1 at 0
    sinc = ops.where(x == 0.0, 1.0, ops.sin(math.pi * safe) / (math.pi * safe))
    if interpolation == "hamming":
        return ops.where(x < 1.0, sinc * (0.54 + 0.46 * ops.cos(math.pi * x)), 0.0)
    if interpolation == "lanczos":
        third = safe / 3.0
        sinc3 = ops.where(x == 0.0, 1.0, ops.sin(math.pi * third) / (math.pi * third))
        return ops.where(x < 3.0, sinc * sinc3, 0.0)
    raise ValueError(f"no in-model filter for interpolation {interpolation!r}; choose one of {', '.join(SUPPORTS)}")


def _axis(ops, interpolation: str, size, box0, box1, out0, out1, length: int, limit: int):
    """For one axis of a batch: (weights, input indices), each (batch, length, taps), of Pillow's resample of
    [box0, box1) of an input of `size` pixels into [out0, out1) of `length` output pixels (zero outside it);
    indices are clipped to the canvas (`limit`), their weights zero where they fall outside the image."""
    support, count = SUPPORTS[interpolation], taps(interpolation)
    span = ops.maximum(out1 - out0, 1.0)
    scale = (box1 - box0) / span  # (batch,)
    filter_scale = ops.maximum(scale, 1.0)
    reach = (support * filter_scale)[:, None]
    position = ops.cast(ops.arange(length), "float64")[None, :]  # (1, length)
    center = box0[:, None] + (position - out0[:, None] + 0.5) * scale[:, None]  # (batch, length)
    first = ops.floor(center - reach + 0.5)  # Pillow's window: [center - reach + 0.5, center + reach + 0.5)
    last = ops.floor(center + reach + 0.5)
    index = first[:, :, None] + ops.cast(ops.arange(count), "float64")[None, None, :]  # (batch, length, taps)
    weight = _filter(ops, interpolation, (index - center[:, :, None] + 0.5) / filter_scale[:, None, None])
    inside = ((index >= 0.0) & (index < size[:, None, None]) & (index < last[:, :, None])
              & (position >= out0[:, None])[:, :, None] & (position < out1[:, None])[:, :, None])
    weight = ops.where(inside, weight, 0.0)
    total = ops.sum(weight, axis=-1, keepdims=True)
    weight = weight / ops.where(total == 0.0, 1.0, total)
    return ops.cast(weight, "float32"), ops.cast(ops.clip(index, 0, limit - 1), "int32")


def _gather_rows(ops, images, weight, index):
    """images (batch, rows, columns, channels), weight/index (batch, out_rows, taps) -> (batch, out_rows,
    columns, channels): each output row the weighted sum of its taps' input rows (one gather per tap)."""
    batch, rows, columns, channels = images.shape
    flat = ops.reshape(images, (batch * rows, columns * channels))
    offset = (ops.arange(batch, dtype="int32") * rows)[:, None]
    result = 0.0
    for tap in range(index.shape[-1]):
        picked = ops.take(flat, ops.reshape(index[:, :, tap] + offset, (-1,)), axis=0)
        picked = ops.reshape(picked, (batch, index.shape[1], columns * channels))
        result = result + weight[:, :, tap, None] * picked
    return ops.reshape(result, (batch, index.shape[1], columns, channels))


def resample(pixels, geometry, size: tuple[int, int], interpolation: str):
    """float32 canvases (batch, H, W, 3) and their geometry (batch, 10: pipeline.images.GEOMETRY) -> the batch
    at `size` (height, width), resampled as Pillow's `resize(size, filter, box)` of each image (into its output
    rectangle, black elsewhere), in float32 clipped to [0, 255]."""
    from keras import ops

    height, width = size
    _, canvas_h, canvas_w, _ = pixels.shape
    # Pillow computes its coefficients in double: a box filter's window edges fall on exact ties.
    # (JAX without jax_enable_x64 computes them in float32, with a warning: the same but at such ties.)
    geometry = ops.cast(geometry, "float64")
    g = [geometry[:, i] for i in range(10)]
    rows_w, rows_i = _axis(ops, interpolation, g[0], g[2], g[4], g[6], g[8], height, canvas_h)
    cols_w, cols_i = _axis(ops, interpolation, g[1], g[3], g[5], g[7], g[9], width, canvas_w)
    tall = _gather_rows(ops, pixels, rows_w, rows_i)  # (batch, height, W, 3)
    wide = _gather_rows(ops, ops.transpose(tall, (0, 2, 1, 3)), cols_w, cols_i)  # (batch, width, height, 3)
    return ops.clip(ops.transpose(wide, (0, 2, 1, 3)), 0.0, 255.0)
