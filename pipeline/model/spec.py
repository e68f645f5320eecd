"""ModelSpec: everything that decides the numbers a backbone produces, and the one rule for the
weights value (`weights_argument`, `stored_weights`). Imports nothing heavy."""
from __future__ import annotations

import os
from dataclasses import dataclass

# How a store and the command line spell "no weights file, random init".
NO_WEIGHTS = "none"


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
    # The interpolation of the resize inside the model (--resize-in model: it takes pipeline.images.Canvas
    # batches); None: the host resized, the model takes pixels at input_size.
    resample: str | None = None

    @property
    def weights_file(self) -> str | None:
        """The weights file the model loads, or None for imagenet and random init."""
        return None if self.weights in (None, "imagenet") else self.weights


def weights_argument(weights: str | None) -> str | None:
    """A weights value as typed or stored -> `ModelSpec.weights`: "imagenet" -> "imagenet";
    "none"/"None"/"null"/""/None -> None (random init); anything else is a weights file path
    (legacy ``.h5`` or Keras 3 ``.weights.h5``), returned with ``~`` expanded. The path is not
    checked here (it may exist only on the workers)."""
    if weights is None:
        return None
    text = str(weights).strip()
    if text.lower() in ("", NO_WEIGHTS, "null"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    return os.path.expanduser(text)


def stored_weights(weights: str | None) -> str:
    """`ModelSpec.weights` -> the value a fingerprint stores: "none" for random init, else as is."""
    return NO_WEIGHTS if weights is None else weights
