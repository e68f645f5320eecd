"""What the launcher checks before any worker starts, so that a mistake is one sentence, not a
page of worker tracebacks.

The model must build with its weights: `imagenet` is downloaded into Keras's cache here (on
local runs, once, under the machine lock the workers use too), a local weights file is loaded
once and must fit the backbone. A successful check is remembered in featurize's cache, so the
next run with the same model and weights skips it. The same sentences are what a worker
raises (`ModelLoadError`) when it cannot build the model on a cluster.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pipeline.logs import native_stderr_to_log
from pipeline.model.failures import as_model_load_error
from pipeline.model.runtime import build_keras_model, tensorflow_without_jax
from pipeline.model.spec import ModelSpec
from pipeline.model.weights_cache import cache_dir


def _marker(spec: ModelSpec) -> str:
    """The cache file that says `spec`'s model was built here once (weights files by their sha256)."""
    fields: dict[str, Any] = {"backbone": spec.backbone, "input_size": list(spec.input_size),
                              "weights": spec.weights if spec.weights_file is None else spec.weights_sha256,
                              "layers": spec.layers, "precision": spec.precision,
                              "weights_ordering": spec.weights_ordering, "predictions": spec.predictions > 0}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), "checked", digest)


def check_model(spec: ModelSpec) -> None:
    """Build `spec`'s model once on this machine (downloading ImageNet weights into Keras's cache);
    raises ModelLoadError with one sentence when it cannot be built."""
    marker = _marker(spec)
    if spec.weights is None or os.path.exists(marker):
        return
    with as_model_load_error(spec), native_stderr_to_log(), tensorflow_without_jax():
        build_keras_model(spec)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as handle:
        handle.write(json.dumps({"backbone": spec.backbone, "weights": spec.weights}))
