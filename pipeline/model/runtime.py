"""A backbone loaded and run outside Beam: Keras loaded for the chosen backend, the model built
from a ModelSpec (`build_keras_model`), compiled for one batch shape and run on uint8 batches,
halving the batch on out-of-memory (`build_feature_model`, `FeatureModel`).

`load_feature_model` is what a worker calls (through `pipeline.model.handler`, the Beam face);
`FeatureStore.embed`, the launcher's check (`pipeline.model.preflight`) and the benchmarks build
with the same functions. Keras and TensorFlow are imported inside the functions, never at module
import: a process sets KERAS_BACKEND and the thread caps (`limit_threads`) first.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.images import CANVAS_SCALE, GEOMETRY
from pipeline.model import backbones, hub, keras_models, resample
from pipeline.model.failures import as_model_load_error, is_out_of_memory
from pipeline.model.spec import ModelSpec
from pipeline.model.weights_cache import cache_dir, machine_lock, stage_weights

RANDOM_INIT_SEED = 0


@dataclass
class FeatureModel:
    """A loaded backbone: uint8 batches of exactly `batch_size` images -> named feature arrays.

    `predict_for(n)` gives a predict function compiled for batches of n: on an out-of-memory
    error (any backend, `pipeline.model.failures.is_out_of_memory`) the model halves its batch size
    and goes on, and keeps the smaller size for the rest of this worker's life.
    """
    batch_size: int
    predict: Callable[..., dict[str, Any]]  # (pixels) or, for a model that resizes, (canvases, geometry)
    predict_for: Callable[[int], Callable[..., dict[str, Any]]] | None = None
    backoffs: int = 0  # how many times the batch size was halved

    def infer(self, pixels: np.ndarray, geometry: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Named feature arrays for `pixels` (and, for a model that resizes, the canvases' `geometry`:
        pipeline.images.stack_for_model)."""
        # A named method, not only __call__: a model shared across processes is a proxy,
        # which forwards public methods only.
        parts, start = [], 0
        while start < len(pixels):
            part = [pixels[start:start + self.batch_size]]
            if geometry is not None:
                part.append(geometry[start:start + self.batch_size])
            try:
                parts.append(self._padded(*part))
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; the rest re-raises
                if not (is_out_of_memory(exc) and self.predict_for and self.batch_size > 1):
                    raise
                self.batch_size //= 2
                self.predict = self.predict_for(self.batch_size)
                self.backoffs += 1
                logging.getLogger(__name__).warning(
                    "featurize: out of memory at batch size %d (%s); this worker now uses %d",
                    self.batch_size * 2, type(exc).__name__, self.batch_size)
                continue
            start += len(part[0])
        return parts[0] if len(parts) == 1 else {name: np.concatenate([part[name] for part in parts])
                                                 for name in parts[0]}

    def _padded(self, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        count = len(inputs[0])
        if count < self.batch_size:
            # One input shape only: a new batch size would trace and compile again.
            inputs = tuple(np.concatenate([array, np.zeros((self.batch_size - count, *array.shape[1:]), array.dtype)])
                           for array in inputs)
        outputs = self.predict(*inputs)
        return {name: np.asarray(value)[:count] for name, value in outputs.items()}

    def current_batch_size(self) -> int:
        return self.batch_size

    __call__ = infer


def load_feature_model(spec: ModelSpec, batch_size: int, *, keras_backend: str = "tensorflow",
                       intra_op_threads: int | None = None, jit_compile: bool = False) -> FeatureModel:
    """On a worker whose environment is set (KERAS_BACKEND, thread variables): Keras loaded for
    `keras_backend`, then `build_feature_model`. A model that cannot be built raises
    ModelLoadError with one sentence (the job stops: a model is never data)."""
    if keras_backend == "jax":
        use_jax_compilation_cache()
    with tensorflow_without_jax():
        limit_threads(intra_op_threads)
        import keras

    if keras.backend.backend() != keras_backend:  # Keras was imported in this process before the handler ran
        raise RuntimeError(f"keras_backend {keras_backend!r} was asked for, but Keras already runs on "
                           f"{keras.backend.backend()!r} in this process; run on separate workers "
                           f"(e.g. --direct_running_mode=multi_processing) or set KERAS_BACKEND")
    with as_model_load_error(spec):
        return build_feature_model(spec, batch_size, jit_compile)


def build_keras_model(spec: ModelSpec):
    """The Keras model of `spec`: pooled features (keras_models.build_pooled_model), or with
    `spec.predictions` the full model's classifier input and output (build_classifier_model);
    with its weights: a weights file staged into this machine's cache, ImageNet weights
    downloaded by Keras under a machine-wide lock, random weights seeded."""
    import keras

    if hub.is_hub(spec.backbone):  # a keras-hub preset: its files staged from the store's copy, by digest
        folder = hub.stage_preset(spec.weights, spec.weights_sha256)
        return hub.build_hub_model(folder, spec.input_size, spec.layers, spec.poolings, spec.gem_p,
                                   spec.l2_normalize, spec.precision)
    backbone = backbones.get_backbone(spec.backbone)
    weights = spec.weights
    if weights is None:
        # Random weights must be the same random weights on every worker.
        keras.utils.set_random_seed(RANDOM_INIT_SEED)
    elif weights != "imagenet" and spec.weights_sha256:
        weights = stage_weights(weights, spec.weights_sha256)
    # Keras downloads ImageNet weights straight into its cache: one process per machine at a time.
    download_lock = (machine_lock(os.path.join(cache_dir(), ".imagenet-download.lock"))
                     if weights == "imagenet" else contextlib.nullcontext())
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(spec.precision)
    try:  # layers keep the policy they were built with; restore the global one for the process
        with download_lock:
            if spec.predictions > 0:
                model = keras_models.build_classifier_model(
                    backbone, spec.input_size, weights, l2_normalize=spec.l2_normalize,
                    weights_ordering=spec.weights_ordering)
            else:
                model = keras_models.build_pooled_model(
                    backbone, spec.input_size, weights, layers=list(spec.layers) if spec.layers else None,
                    poolings=list(spec.poolings), gem_p=spec.gem_p, l2_normalize=spec.l2_normalize,
                    weights_ordering=spec.weights_ordering)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return model


def build_feature_model(spec: ModelSpec, batch_size: int, jit_compile: bool = False) -> FeatureModel:
    """Build the backbone with preprocessing folded in, compiled for one fixed batch shape, warmed up."""
    import keras

    model = build_keras_model(spec)
    height, width = spec.input_size
    if hub.is_hub(spec.backbone):
        normalize = lambda x: x  # noqa: E731 - the hub model holds its image converter's arithmetic
    else:
        normalize = functools.partial(backbones.preprocess_batch, backbones.get_backbone(spec.backbone))
    if spec.resample is None:
        inputs = [((height, width, 3), "uint8")]
        preprocess = normalize
    else:  # --resize-in model: the model takes canvases and their geometry, and resamples them first
        inputs = [((CANVAS_SCALE * height, CANVAS_SCALE * width, 3), "uint8"), ((len(GEOMETRY),), "float32")]

        def preprocess(pixels, geometry):
            return normalize(resample.resample(pixels, geometry, (height, width), spec.resample))

    def predict_for(size: int) -> Callable[..., dict[str, Any]]:
        """A predict function for batches of exactly `size` (compiled on its first call)."""
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            @tf.function(input_signature=[tf.TensorSpec([size, *shape], dtype) for shape, dtype in inputs],
                         jit_compile=jit_compile)
            def forward(pixels, *geometry):
                return model(preprocess(tf.cast(pixels, tf.float32), *geometry), training=False)

            return lambda *arrays: {name: value.numpy() for name, value in forward(*arrays).items()}

        # JAX and torch: Keras's predict step, jit-compiled per input shape on JAX (always: jit_compile
        # has nothing to switch there), so one fixed batch shape means one compilation.
        def predict(pixels: np.ndarray, *geometry: np.ndarray) -> dict[str, Any]:
            batch = preprocess(pixels.astype(np.float32), *geometry)
            return {name: keras.ops.convert_to_numpy(value)
                    for name, value in model.predict_on_batch(batch).items()}
        return predict

    feature_model = FeatureModel(batch_size, predict_for(batch_size), predict_for)
    # trace and compile now, not on the first batch
    feature_model(*[np.zeros((1, *shape), dtype) for shape, dtype in inputs])
    return feature_model


def limit_threads(intra_op_threads: int | None) -> None:
    """Cap TF's pools so several local workers do not oversubscribe the cores."""
    if not intra_op_threads:
        return
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(intra_op_threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
    os.environ.setdefault("OMP_NUM_THREADS", str(intra_op_threads))
    try:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except (ImportError, RuntimeError):  # TF absent, or already initialised in this process
        pass


@contextlib.contextmanager
def tensorflow_without_jax() -> Iterator[None]:
    """While TensorFlow loads, hide jax from it: `tf.lite` imports jax whenever it is installed,
    which costs every TensorFlow process 2-3 s more here and sets TF_CPP_MIN_LOG_LEVEL behind
    the user's back. A None entry in sys.modules makes that import fail as if jax were absent;
    once TensorFlow is loaded, jax imports normally."""
    if "tensorflow" in sys.modules or "jax" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        yield
        return
    sys.modules["jax"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "jax" in sys.modules and sys.modules["jax"] is None:
            del sys.modules["jax"]


def use_jax_compilation_cache() -> None:
    """JAX compiles every initializer and the model once per process (a minute for MobileNetV3Small
    on a busy CPU); its persistent cache makes every later process of the machine start in
    seconds. The user's own JAX_* settings win."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache_dir(), "jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
