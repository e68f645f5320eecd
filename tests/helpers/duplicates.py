"""Near-duplicates for tests: images with planted copies (the same bytes, re-encoded, resized), and the groups
a brute-force all-pairs comparison and a plain union-find make of a matrix. Not a test module."""
from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

from tests.helpers.samples import _rgb

ORIGINALS = 12


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def planted_images(root: pathlib.Path) -> dict[str, str]:
    """ORIGINALS distinct JPEGs in `root`, and copies of three of them: the same bytes, re-encoded at quality 70,
    and resized to 90% and re-encoded. Returns {copy: its original}."""
    root.mkdir(parents=True, exist_ok=True)
    images = {f"img{seed:02d}.jpg": _rgb(96, 80, seed) for seed in range(ORIGINALS)}
    for name, image in images.items():
        (root / name).write_bytes(_jpeg(image, 95))
    (root / "copy-same-bytes.jpg").write_bytes((root / "img00.jpg").read_bytes())
    (root / "copy-quality70.jpg").write_bytes(_jpeg(images["img01.jpg"], 70))
    (root / "copy-resized.jpg").write_bytes(_jpeg(images["img02.jpg"].resize((86, 72), Image.BILINEAR), 90))
    return {"copy-same-bytes.jpg": "img00.jpg", "copy-quality70.jpg": "img01.jpg", "copy-resized.jpg": "img02.jpg"}


def brute_force_groups(vectors: np.ndarray, threshold: float, metric: str = "cosine") -> set[frozenset[int]]:
    """The connected components of two or more rows of every pair at or past the threshold: all pairs at once
    (numpy), joined by a plain union-find."""
    vectors = vectors.astype(np.float64)
    if metric == "cosine":
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        near = unit @ unit.T >= threshold
    else:
        squared = np.sum(vectors ** 2, axis=1)
        near = np.sqrt(np.maximum(squared[:, None] - 2 * vectors @ vectors.T + squared[None, :], 0)) <= threshold
    parent = list(range(len(vectors)))

    def root(row):
        while parent[row] != row:
            row = parent[row]
        return row
    for i, j in zip(*np.nonzero(np.triu(near, 1))):
        parent[root(i)] = root(j)
    groups: dict[int, set[int]] = {}
    for row in range(len(vectors)):
        groups.setdefault(root(row), set()).add(row)
    return {frozenset(group) for group in groups.values() if len(group) > 1}
