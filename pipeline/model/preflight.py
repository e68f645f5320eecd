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
import re
from typing import Any

from pipeline.model.handler import ModelSpec, build_keras_model, tensorflow_without_jax
from pipeline.logs import JobError, native_stderr_to_log
from pipeline.model.weight_files import NoClassifier, WeightsDoNotFit
from pipeline.model.weights_cache import cache_dir

_URL = re.compile(r"https?://[^\s'\"]+?(?=[:;,]?\s|[:;,]?$|['\"])")


class ModelLoadError(JobError):
    """The run's model cannot be built; the message is the one sentence the user sees."""


def _first_reason(text: str) -> str:
    """The first attempt's reason from keras_models' "does not fit" error (a Keras 3 file), on one line."""
    reasons = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("as an ")]
    reason = " ".join((reasons[0] if reasons else text).split())
    return reason.split(" List of objects", 1)[0][:300]  # Keras then lists every object: the first says enough


def model_failure(spec: ModelSpec, exc: BaseException) -> str:
    """The one sentence for an exception raised while building `spec`'s model."""
    text = str(exc)
    flat = " ".join(text.split())
    if spec.weights == "imagenet":
        url = _URL.search(flat)
        if url is not None or "fetch failure" in flat.lower():
            where = url.group(0) if url else "Keras's download server"
            reason = flat.split(" -- ", 1)[-1][:200] if " -- " in flat else type(exc).__name__
            return (f"weights imagenet for {spec.backbone} could not be downloaded from {where} ({reason}); "
                    f"on a machine without internet pass --weights FILE with a local copy of that file, "
                    f"or --weights none for random weights")
    if isinstance(exc, NoClassifier):
        return text
    if spec.weights not in (None, "imagenet") and isinstance(exc, (ValueError, OSError)):
        reason = exc.reason if isinstance(exc, WeightsDoNotFit) else _first_reason(text)
        return (f"weights {spec.weights!r} do not fit {spec.backbone} at {spec.input_size[0]}x{spec.input_size[1]} "
                f"({reason}); give a weights file saved from {spec.backbone}, "
                f"or --weights imagenet or none")
    return f"{spec.backbone} cannot be built ({type(exc).__name__}: {flat[:300]})"


def _marker(spec: ModelSpec) -> str:
    fields: dict[str, Any] = {"backbone": spec.backbone, "input_size": list(spec.input_size),
                              "weights": spec.weights if spec.weights in (None, "imagenet") else spec.weights_sha256,
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
    try:
        with native_stderr_to_log(), tensorflow_without_jax():
            build_keras_model(spec)
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises bare Exception for a failed download
        raise ModelLoadError(model_failure(spec, exc)) from exc
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as handle:
        handle.write(json.dumps({"backbone": spec.backbone, "weights": spec.weights}))
