"""Library transforms for Beam graphs of your own: `ReadImages` (input spec -> ImageRecords) and
`ExtractFeatures` (ImageRecords -> rows).

`featurize run` does not use them: its stages are `pipeline.job.stages`. Both read through
`pipeline.inputs.reading`, decode through `decode_record`, run the model through the one
`LoadedModel` (a failing batch bisected, only the inputs that fail alone becoming error rows) and
make rows with `feature_row`, so a graph of your own gives the rows `featurize run` would.
"""
from __future__ import annotations

import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.elements import METRICS_NAMESPACE, ErrorRecord, ImageRecord, error_from_exception
from pipeline.images import DecodeSpec
from pipeline.inputs.listing import list_inputs, resolve_input
from pipeline.job.stages import ReadUnit, RunCounters, decode_record, feature_row, with_losers
from pipeline.job.units import plan_units
from pipeline.model.handler import KerasBackboneHandler, LoadedModel


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
        self._metrics = RunCounters()

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


class _Infer(beam.DoFn):
    """A batch of (ImageMeta, pixels) -> rows; inputs that fail alone -> 'errors' (stage infer)."""

    def __init__(self, handler: KerasBackboneHandler, dtype: np.dtype):
        self._handler, self._dtype = handler, dtype
        self._tag = LoadedModel.new_tag()  # pickled: one model per process for the graph

    def setup(self):
        self._model = LoadedModel(self._handler, self._tag)

    def process(self, batch):
        predictions, failures = self._model.infer(batch)
        if failures:
            Metrics.counter(METRICS_NAMESPACE, "infer_errors").inc(len(failures))
        for position, exc in failures:
            meta = batch[position][0]
            yield beam.pvalue.TaggedOutput("errors", error_from_exception(meta.key, meta.uri, "infer", exc))
        for prediction in predictions:
            if prediction is not None:
                yield feature_row(*prediction, self._dtype)


class ExtractFeatures(beam.PTransform):
    """Decode -> batches (the handler's sizes) -> the model -> feature rows, for graphs of your own.

    Input: a PCollection of ImageRecord. Output: a dict with `rows` (dicts: key, uri,
    width, height and one array per model output) and `errors` (ErrorRecord, stages
    decode and infer: an input that fails the model alone; a model that fails every input
    fails the bundle instead, as in `featurize run`).
    """

    def __init__(self, handler: KerasBackboneHandler, decode: DecodeSpec, dtype: str = "float32"):
        super().__init__()
        self._handler, self._decode, self._dtype = handler, decode, np.dtype(dtype)

    def expand(self, images):
        decoded = images | "Decode" >> beam.ParDo(_Decode(self._decode)).with_outputs("errors", main="pixels")
        inferred = (decoded.pixels
                    | "Batch" >> beam.BatchElements(**self._handler.batch_elements_kwargs())
                    | "Infer" >> beam.ParDo(_Infer(self._handler, self._dtype)).with_outputs("errors", main="rows"))
        errors = (decoded.errors, inferred.errors) | "Errors" >> beam.Flatten()
        return {"rows": inferred.rows, "errors": errors}
