"""ModelSpec: everything that decides the numbers a backbone produces. Imports nothing heavy."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides the numbers a backbone produces (part of the fingerprint)."""
    backbone: str
    input_size: tuple[int, int]  # (height, width)
    weights: str | None  # "imagenet", None (random init) or a local weights file
    layers: tuple[str, ...] | None = None  # None: the backbone's final layer
    poolings: tuple[str, ...] = ("avg",)
    gem_p: float = 3.0
    l2_normalize: bool = False
    weights_sha256: str | None = None  # for a weights file: workers copy and verify it (pipeline.model.weights_cache)
    precision: str = "float32"  # a Keras dtype policy: float32, mixed_float16, mixed_bfloat16
    weights_ordering: str = "auto"  # kernel ordering of a legacy weights file: auto, th or tf
    predictions: int = 0  # top-K classes from the classifier (0: features only, no classifier)
