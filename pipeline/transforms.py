"""ExtractFeatures: ImageRecords -> feature rows, with every failure kept as an error row."""
from __future__ import annotations

import os
import time
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from pipeline.handler import KerasBackboneHandler
from pipeline.images import DecodeSpec, decode_image
from pipeline.progress import ProgressWriter
from pipeline.records import METRICS_NAMESPACE, ErrorRecord, ImageMeta, ImageRecord, error_from_exception


class _Decode(beam.DoFn):
    """ImageRecord -> (ImageMeta, HxWx3 uint8); undecodable inputs -> 'errors' (stage decode)."""

    def __init__(self, spec: DecodeSpec, progress_dir: str | None = None):
        self._spec = spec
        self._progress_dir = progress_dir
        self._progress = None
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "decoded")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "decode_errors")
        self._decode_ms = Metrics.counter(METRICS_NAMESPACE, "decode_ms")
        self._bundle_ms = 0.0

    def setup(self):
        if self._progress_dir and os.path.isdir(self._progress_dir):
            self._progress = ProgressWriter(self._progress_dir)

    def finish_bundle(self):
        # Summed per bundle: a millisecond counter bumped per image would round most images to 0.
        self._decode_ms.inc(int(round(self._bundle_ms)))
        self._bundle_ms = 0.0
        if self._progress:
            self._progress.flush()

    def process(self, record: ImageRecord):
        started = time.perf_counter()
        try:
            pixels, (width, height) = decode_image(record.data, self._spec)
            failure = None
        except Exception as exc:  # a bad image is one error row, never a failed job
            failure = exc
        self._bundle_ms += (time.perf_counter() - started) * 1000
        if self._progress:
            self._progress.add()
        if failure is not None:
            self._failed.inc()
            Metrics.counter(METRICS_NAMESPACE, f"decode_errors_{type(failure).__name__}").inc()
            yield beam.pvalue.TaggedOutput(
                "errors", error_from_exception(record.key, record.uri, "decode", failure))
            return
        self._decoded.inc()
        yield ImageMeta(record.key, record.uri, width, height), pixels


def _failed_batch_to_errors(dead_letter):
    """RunInference's dead letters are (batch, (type, repr, traceback)): one error row per image."""
    batch, (exc_type, exc_repr, _) = dead_letter
    Metrics.counter(METRICS_NAMESPACE, "infer_errors").inc(len(batch))
    for meta, _ in batch:
        yield ErrorRecord(meta.key, meta.uri, "infer", exc_type.__name__, exc_repr[:2000])


class _ToRow(beam.DoFn):
    """(ImageMeta, {output: vector}) -> a row dict for the feature sinks."""

    def __init__(self, dtype: str):
        self._dtype = np.dtype(dtype)
        self._rows = Metrics.counter(METRICS_NAMESPACE, "rows")

    def process(self, prediction) -> Any:
        meta, outputs = prediction
        row = {"key": meta.key, "uri": meta.uri, "width": meta.width, "height": meta.height}
        for name, vector in outputs.items():
            row[name] = np.asarray(vector, dtype=self._dtype)
        self._rows.inc()
        yield row


class ExtractFeatures(beam.PTransform):
    """Decode -> RunInference(KerasBackboneHandler) -> feature rows.

    Input: a PCollection of ImageRecord. Output: a dict with `rows` (dicts: key, uri,
    width, height and one array per model output) and `errors` (ErrorRecord, stages
    decode and infer). The decoded pixels never leave the inference step. `progress_dir`
    (a local folder, local runners only) receives per-worker counts for a progress line.
    """

    def __init__(self, handler: KerasBackboneHandler, decode: DecodeSpec, dtype: str = "float32",
                 progress_dir: str | None = None):
        super().__init__()
        self._handler = handler
        self._decode = decode
        self._dtype = dtype
        self._progress_dir = progress_dir

    def expand(self, images):
        decoded = images | "Decode" >> beam.ParDo(
            _Decode(self._decode, self._progress_dir)).with_outputs("errors", main="pixels")
        predictions, dead_letters = (
            decoded.pixels | "Infer" >> RunInference(self._handler).with_exception_handling())
        rows = predictions | "ToRow" >> beam.ParDo(_ToRow(self._dtype))
        infer_errors = dead_letters.failed_inferences | "InferErrors" >> beam.FlatMap(_failed_batch_to_errors)
        errors = (decoded.errors, infer_errors) | "Errors" >> beam.Flatten()
        return {"rows": rows, "errors": errors}
