"""Library transforms for Beam graphs of your own: `ReadImages` (input spec -> ImageRecords) and
`ExtractFeatures` (ImageRecords -> rows, through RunInference).

`featurize run` does not use them: its stages are `pipeline.job.stages`. Both read through
`pipeline.inputs.reading`, decode through `decode_record` and make rows with `feature_row`, so a
graph of your own gives the rows `featurize run` would.
"""
from __future__ import annotations

import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from pipeline.elements import METRICS_NAMESPACE, ErrorRecord, ImageRecord
from pipeline.images import DecodeSpec
from pipeline.inputs.listing import list_inputs, resolve_input
from pipeline.job.stages import ReadUnit, StageMetrics, decode_record, feature_row, with_losers
from pipeline.job.units import plan_units
from pipeline.model.handler import KerasBackboneHandler


class ReadImages(beam.PTransform):
    """Read every image of an input spec as `ImageRecord`s, for graphs of your own.

    Input: a pipeline root. Output: a dict with `images` (ImageRecord) and `errors`
    (ErrorRecord, stage "read", duplicate keys included). Accepts what `--input` accepts; the
    input is listed when the graph is built.
    """

    def __init__(self, input_spec: str):
        super().__init__()
        self._listing = list_inputs(resolve_input(input_spec))

    def expand(self, pbegin):
        # Planned when the graph is built and carried in it: a library graph has no store to hold a plan.
        units = plan_units(self._listing, (), unit_size=1000, batch_size=1).units()
        created = pbegin | "Units" >> beam.Create(units)
        store = None
        if any(unit.layout != "files" for unit in units):
            store = created | "StoreUnits" >> beam.Map(lambda unit: (unit, None))
        read = (with_losers(created, store, "")
                | "ReadUnits" >> beam.ParDo(ReadUnit()).with_outputs("errors", main="images"))
        return {"images": read.images, "errors": read.errors}


class _Decode(beam.DoFn):
    """ImageRecord -> (ImageMeta, HxWx3 uint8); undecodable inputs -> 'errors' (stage decode)."""

    def __init__(self, spec: DecodeSpec):
        self._spec = spec

    def setup(self):
        self._metrics = StageMetrics()

    def finish_bundle(self):
        self._metrics.flush()

    def process(self, record: ImageRecord):
        started = time.perf_counter()
        decoded = decode_record(record, self._spec)
        self._metrics.decode_seconds += time.perf_counter() - started
        self._metrics.decoded(decoded)
        if isinstance(decoded, ErrorRecord):
            yield beam.pvalue.TaggedOutput("errors", decoded)
            return
        yield decoded


def _failed_batch_to_errors(dead_letter):
    """RunInference's dead letters are (batch, (type, repr, traceback)): one error row per image."""
    batch, (exc_type, exc_repr, _) = dead_letter
    Metrics.counter(METRICS_NAMESPACE, "infer_errors").inc(len(batch))
    for meta, _ in batch:
        yield ErrorRecord(meta.key, meta.uri, "infer", exc_type.__name__, exc_repr[:2000])


class ExtractFeatures(beam.PTransform):
    """Decode -> RunInference(KerasBackboneHandler) -> feature rows, for graphs of your own.

    Input: a PCollection of ImageRecord. Output: a dict with `rows` (dicts: key, uri,
    width, height and one array per model output) and `errors` (ErrorRecord, stages
    decode and infer).
    """

    def __init__(self, handler: KerasBackboneHandler, decode: DecodeSpec, dtype: str = "float32"):
        super().__init__()
        self._handler, self._decode, self._dtype = handler, decode, np.dtype(dtype)

    def expand(self, images):
        decoded = images | "Decode" >> beam.ParDo(_Decode(self._decode)).with_outputs("errors", main="pixels")
        predictions, dead_letters = (
            decoded.pixels | "Infer" >> RunInference(self._handler).with_exception_handling())
        rows = predictions | "ToRow" >> beam.Map(lambda p, dtype=self._dtype: feature_row(*p, dtype))
        infer_errors = dead_letters.failed_inferences | "InferErrors" >> beam.FlatMap(_failed_batch_to_errors)
        errors = (decoded.errors, infer_errors) | "Errors" >> beam.Flatten()
        return {"rows": rows, "errors": errors}
