"""KerasBackboneHandler: the Beam face of a backbone (Beam's batching, environment and metrics; loading
and running the model is `pipeline.model.runtime`'s), and `LoadedModel`: the handler's model as a worker
runs it, the one inference path of `featurize run`'s stage and the library's `ExtractFeatures`.

Keras (and TensorFlow) are imported in `load_model`, on the worker, after the
environment (Keras backend, thread pools) is set, never at module import.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Iterable, Sequence

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.utils import multi_process_shared, shared

from pipeline import logs
from pipeline.elements import METRICS_NAMESPACE, ImageMeta
from pipeline.images import Canvas, stack_for_model
from pipeline.model.devices import pin_process_to_gpu
from pipeline.model.failures import isolate_failures
from pipeline.model.runtime import FeatureModel, load_feature_model
from pipeline.model.spec import ModelSpec

Example = tuple[ImageMeta, np.ndarray | Canvas]  # (meta, HxWx3 uint8, or a canvas for a model that resizes)
Prediction = tuple[ImageMeta, dict[str, np.ndarray]]  # (meta, {output name: vector})


class KerasBackboneHandler(ModelHandler[Example, Prediction, FeatureModel]):
    """Runs a `keras.applications` backbone on batches of decoded images.

    Elements are `(ImageMeta, HxWx3 uint8 array)`; predictions are `(ImageMeta, {output: vector})`:
    the pixels are dropped here so they are never carried downstream.
    """

    def __init__(self, spec: ModelSpec, *, batch_size: int = 32, min_batch_size: int | None = None,
                 intra_op_threads: int | None = None,
                 keras_backend: str = "tensorflow", jit_compile: bool = False,
                 share_across_processes: bool = False, verbose: bool = False, env_vars: dict[str, str] | None = None):
        min_batch_size = min(min_batch_size or batch_size, batch_size)
        environment = {"KERAS_BACKEND": keras_backend, **({logs.VERBOSE_ENV: "1"} if verbose else {}), **(env_vars or {})}
        super().__init__(min_batch_size=min_batch_size, max_batch_size=batch_size,
                         large_model=share_across_processes, env_vars=environment)
        self.spec = spec
        self._batch_size = batch_size
        self._batches = Metrics.counter(METRICS_NAMESPACE, "batches")
        self._batch_size_dist = Metrics.distribution(METRICS_NAMESPACE, "batch_size")
        self._infer_ms = Metrics.counter(METRICS_NAMESPACE, "infer_ms")
        self._ms_per_image = Metrics.distribution(METRICS_NAMESPACE, "inference_ms_per_image")
        self._oom_backoffs = Metrics.counter(METRICS_NAMESPACE, "oom_backoffs")
        self._intra_op_threads = intra_op_threads
        self._jit_compile = jit_compile

    def load_model(self) -> FeatureModel:
        quiet = logs.quiet()
        self.set_environment_vars()
        with logs.native_stderr_to_log(quiet):  # TensorFlow's import and start-up lines go to the log
            return load_feature_model(self.spec, self._batch_size, keras_backend=self._env_vars["KERAS_BACKEND"],
                                      intra_op_threads=self._intra_op_threads, jit_compile=self._jit_compile)

    def run_inference(self, batch: Sequence[Example], model: FeatureModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[Prediction]:
        metas = [meta for meta, _ in batch]
        started = time.perf_counter()
        size_before = model.current_batch_size()
        pixels, geometry = stack_for_model([pixels for _, pixels in batch])
        outputs = model.infer(pixels) if geometry is None else model.infer(pixels, geometry)
        elapsed_ms = (time.perf_counter() - started) * 1000
        size_after = model.current_batch_size()
        if size_after < size_before:  # halved at least once: count each halving
            self._oom_backoffs.inc(int(np.log2(size_before // size_after)))
        self._batches.inc()
        self._batch_size_dist.update(len(batch))
        self._infer_ms.inc(int(elapsed_ms))
        self._ms_per_image.update(int(round(elapsed_ms / len(batch))))
        return [(meta, {name: values[i] for name, values in outputs.items()})
                for i, meta in enumerate(metas)]

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        return sum(pixels.nbytes for _, pixels in batch)



# One model per worker process (per GPU), whatever the number of DoFn instances (threads) in it.
_MODELS = shared.Shared()


class LoadedModel:
    """A handler's model in a worker: loaded on the first batch (a resumed run with nothing left loads
    none), once per process, or once per machine with `share_across_processes`, and once per GPU (the
    process claims one before its backend loads); run on a batch with the inputs that fail alone
    isolated (`pipeline.model.failures.isolate_failures`: their exceptions come back, the rest get
    predictions; a batch where nothing works raises). A model that cannot load raises: never data.

    `tag` names the model across the DoFn instances of one job (pickled with the DoFn, so every worker
    of the job shares it)."""

    def __init__(self, handler: KerasBackboneHandler, tag: str):
        self._handler, self._tag, self._model = handler, tag, None

    @staticmethod
    def new_tag() -> str:
        """A tag for one job's (or graph's) model: made when the DoFn is built, pickled with it."""
        return f"featurize-model-{uuid.uuid4().hex}"

    def _acquire(self) -> FeatureModel:
        if self._model is None:
            gpu = pin_process_to_gpu()  # before the backend loads; one shared model per GPU
            tag = self._tag if gpu is None else f"{self._tag}-gpu{gpu}"
            if self._handler.share_model_across_processes():
                self._model = multi_process_shared.MultiProcessShared(
                    self._handler.load_model, tag=tag, always_proxy=True).acquire()
            else:
                self._model = _MODELS.acquire(self._handler.load_model, tag=tag)
        return self._model

    def infer(self, batch: Sequence[Example]) -> tuple[list[Prediction | None], list[tuple[int, Exception]]]:
        """(a prediction per input, None where it failed; the failed inputs' positions and exceptions)."""
        model = self._acquire()
        return isolate_failures(lambda part: self._handler.run_inference(part, model), batch)

    def current_batch_size(self) -> int | None:
        """The batch size the model runs now (halved after running out of memory); None before it loads."""
        return None if self._model is None else self._model.current_batch_size()
