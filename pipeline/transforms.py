"""The featurize stages as Beam transforms.

`ProcessUnits` (what `featurize run` uses): each work unit is read, decoded, run through
the backbone in fixed-size batches and written by one DoFn call, then committed, from
`process()`, so a unit is in the store as soon as it is done (the local runner would only
run a `finish_bundle` at the very end of the stage) and nothing per image crosses a
shuffle. `PendingUnits` feeds it. For library users who build their own graph:
`ReadImages` (input spec -> ImageRecords) and `ExtractFeatures` (ImageRecords -> rows with
RunInference). Both paths read through `pipeline.sources` and decode through `decode_record`.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.utils import multi_process_shared, shared

from pipeline import journal
from pipeline.dedupe import FindDuplicateKeys, key_hashes
from pipeline.handler import KerasBackboneHandler
from pipeline.images import DecodeSpec, decode_image
from pipeline.progress import ProgressWriter
from pipeline.records import METRICS_NAMESPACE, ErrorRecord, ImageMeta, ImageRecord, WorkUnit, error_from_exception
from pipeline.sinks import UnitWriter
from pipeline.sources import list_inputs, resolve_input, unit_records
from pipeline.units import plan_units

# One model per worker process, whatever the number of DoFn instances (threads) in it.
_MODELS = shared.Shared()


def decode_record(record: ImageRecord, spec: DecodeSpec) -> tuple[ImageMeta, np.ndarray] | ErrorRecord:
    """(meta, HxWx3 uint8) for a decodable image; a decode ErrorRecord otherwise."""
    try:
        pixels, (width, height) = decode_image(record.data, spec)
    except Exception as exc:  # a bad image is one error row, never a failed job
        return error_from_exception(record.key, record.uri, "decode", exc)
    return ImageMeta(record.key, record.uri, width, height), pixels


class _StageMetrics:
    """The `featurize` counters every stage reports (see README, Progress and metrics)."""

    def __init__(self):
        counter = lambda name: Metrics.counter(METRICS_NAMESPACE, name)  # noqa: E731
        self.inputs, self.bytes_read, self.read_errors = counter("inputs"), counter("bytes_read"), counter("read_errors")
        self.decoded, self.decode_errors = counter("decoded"), counter("decode_errors")
        self.infer_errors, self.rows = counter("infer_errors"), counter("rows")
        self.units = counter("units")
        self._read_ms, self._decode_ms = counter("read_ms"), counter("decode_ms")
        self.read_seconds = self.decode_seconds = 0.0

    def decode_failed(self, error: ErrorRecord) -> None:
        self.decode_errors.inc()
        Metrics.counter(METRICS_NAMESPACE, f"decode_errors_{error.error_type}").inc()

    def flush_times(self) -> None:
        # Summed, then counted once: a millisecond counter bumped per image would round small images to 0.
        self._read_ms.inc(int(round(self.read_seconds * 1000)))
        self._decode_ms.inc(int(round(self.decode_seconds * 1000)))
        self.read_seconds = self.decode_seconds = 0.0


def _timed(iterator: Iterator, metrics: _StageMetrics) -> Iterator:
    """Yield from `iterator`, adding the time spent inside it (reading) to the read-stage time."""
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            metrics.read_seconds += time.perf_counter() - started
        yield item


class _ProcessUnit(beam.DoFn):
    """(WorkUnit, {member position: where its key is kept}) -> the unit's journal entry, once committed."""

    def __init__(self, output: str, handler: KerasBackboneHandler, decode: DecodeSpec, fmt: str,
                 fingerprint: dict[str, Any], batch_size: int, progress_dir: str | None = None):
        self._output, self._handler, self._decode, self._format = output, handler, decode, fmt
        self._fingerprint, self._batch_size, self._progress_dir = fingerprint, batch_size, progress_dir
        self._model_tag = f"featurize-model-{uuid.uuid4().hex}"  # pickled: one tag for every worker of the job
        self._dtype = np.dtype(fingerprint["dtype"])
        self._metrics = _StageMetrics()

    def setup(self):
        self._model = None
        self._progress = (ProgressWriter(self._progress_dir)
                          if self._progress_dir and os.path.isdir(self._progress_dir) else None)

    def _loaded_model(self):
        # Loaded on the first unit, not in setup(): a resumed run with nothing left loads no model.
        if self._model is None:
            if self._handler.share_model_across_processes():
                self._model = multi_process_shared.MultiProcessShared(
                    self._handler.load_model, tag=self._model_tag, always_proxy=True).acquire()
            else:
                self._model = _MODELS.acquire(self._handler.load_model, tag=self._model_tag)
        return self._model

    def process(self, unit_losers: tuple[WorkUnit, dict[int, str]]):
        unit, losers = unit_losers
        committed = journal.read_journal(self._output, unit.unit_id)
        if committed is not None:  # an earlier attempt of this job committed it (a retried bundle)
            yield committed
            return
        writer = UnitWriter(self._output, unit.unit_id, self._format, self._fingerprint)
        try:
            entry, kept = self._write_unit(unit, losers, writer)
            committed = writer.commit(entry, kept)
        except BaseException:
            writer.abort()
            raise
        finally:
            self._metrics.flush_times()
        self._metrics.units.inc()
        if self._progress:
            self._progress.unit_done()
        yield committed

    def _write_unit(self, unit: WorkUnit, losers: dict[int, str], writer: UnitWriter):
        metrics, batch, inputs, kept_keys = self._metrics, [], 0, []
        for item in _timed(unit_records(unit, losers), metrics):
            inputs += 1
            metrics.inputs.inc()
            if isinstance(item, ErrorRecord):
                metrics.read_errors.inc()
                writer.add_error(item)
                if item.error_type != "DuplicateKey":
                    kept_keys.append(item.key)  # an unreadable input still holds its key
                continue
            metrics.bytes_read.inc(len(item.data))
            kept_keys.append(item.key)
            started = time.perf_counter()
            decoded = decode_record(item, self._decode)
            metrics.decode_seconds += time.perf_counter() - started
            if self._progress:
                self._progress.add()
            if isinstance(decoded, ErrorRecord):
                metrics.decode_failed(decoded)
                writer.add_error(decoded)
                continue
            metrics.decoded.inc()
            batch.append(decoded)
            if len(batch) == self._batch_size:
                self._infer(batch, writer)
                batch = []
                journal.failpoint("unit-read")
        if batch:
            self._infer(batch, writer)
        entry = {"layout": unit.layout, "source": unit.source, "inputs": inputs}
        if unit.layout == "files":
            entry["keys"] = sorted({key for key, _ in unit.members} | {e.key for e in unit.rejected})
            return entry, None
        return entry, key_hashes(kept_keys)

    def _infer(self, batch: list[tuple[ImageMeta, np.ndarray]], writer: UnitWriter) -> None:
        try:
            predictions = self._handler.run_inference(batch, self._loaded_model())
        except Exception as exc:  # noqa: BLE001 - as RunInference's dead letters: the batch's images become error rows
            self._metrics.infer_errors.inc(len(batch))
            for meta, _ in batch:
                writer.add_error(error_from_exception(meta.key, meta.uri, "infer", exc))
            return
        for meta, outputs in predictions:
            writer.add_row(feature_row(meta, outputs, self._dtype))
            self._metrics.rows.inc()


def feature_row(meta: ImageMeta, outputs: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, Any]:
    row = {"key": meta.key, "uri": meta.uri, "width": meta.width, "height": meta.height}
    for name, vector in outputs.items():
        row[name] = np.asarray(vector, dtype=dtype)
    return row


def _with_losers(joined):
    _, groups = joined
    return [(unit, dict(groups["losers"])) for unit in groups["unit"]]


class PendingUnits(beam.PTransform):
    """The units a run processes, each with the members that must give up a duplicate key.

    Input: a pipeline root. Output: (WorkUnit, {member position: where its key is kept}),
    spread over the workers by a shuffle of units (never of images). For tar units, keys are
    checked across every shard of the store (`pipeline.dedupe`), including `committed` units
    (their journal entries, by unit id) read from `output`.
    """

    def __init__(self, pending: list[WorkUnit], committed: dict[str, dict[str, Any]] | None = None,
                 output: str = ""):
        super().__init__()
        self._pending, self._committed, self._output = list(pending), dict(committed or {}), output

    def expand(self, pbegin):
        keyed = pbegin | "Units" >> beam.Create([(unit.unit_id, unit) for unit in self._pending])
        if not any(unit.layout == "tar" for unit in self._pending):
            return (keyed | "Spread" >> beam.Reshuffle()
                    | "NoLosers" >> beam.Map(lambda item: (item[1], {})))
        everything = [(unit, False) for unit in self._pending] + [
            (WorkUnit(unit_id, "tar", entry["source"]), True) for unit_id, entry in self._committed.items()]
        losers = (pbegin | "StoreUnits" >> beam.Create(everything)
                  | "DuplicateKeys" >> FindDuplicateKeys(self._output))
        return ({"unit": keyed, "losers": losers}
                | "JoinLosers" >> beam.CoGroupByKey()  # also spreads the units over the workers
                | "WithLosers" >> beam.FlatMap(_with_losers))


class _ReadUnit(beam.DoFn):
    """(WorkUnit, losers) -> its ImageRecords; read errors (and duplicate keys) -> 'errors'."""

    def __init__(self):
        self._metrics = _StageMetrics()

    def finish_bundle(self):
        self._metrics.flush_times()

    def process(self, unit_losers):
        for item in _timed(unit_records(*unit_losers), self._metrics):
            self._metrics.inputs.inc()
            if isinstance(item, ErrorRecord):
                self._metrics.read_errors.inc()
                yield beam.pvalue.TaggedOutput("errors", item)
            else:
                self._metrics.bytes_read.inc(len(item.data))
                yield item


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
        plan = plan_units(self._listing, {}, unit_size=1000, batch_size=1)
        read = (pbegin | "PendingUnits" >> PendingUnits(plan.pending)
                | "ReadUnits" >> beam.ParDo(_ReadUnit()).with_outputs("errors", main="images"))
        return {"images": read.images, "errors": read.errors}


class ProcessUnits(beam.PTransform):
    """Read -> decode -> infer -> write -> commit, one work unit per element.

    Input: a PCollection of (WorkUnit, {member position: where its key is kept}) (see
    `pipeline.dedupe`). Output: the journal entry of every unit, once committed into
    `output` (see `pipeline.journal`). Every input of a unit ends in exactly one place: a
    feature row or an error row (stages read, decode, infer).
    """

    def __init__(self, output: str, handler: KerasBackboneHandler, decode: DecodeSpec, fmt: str,
                 fingerprint: dict[str, Any], batch_size: int, progress_dir: str | None = None):
        super().__init__()
        self._dofn = _ProcessUnit(output, handler, decode, fmt, fingerprint, batch_size, progress_dir)

    def expand(self, units):
        return units | "ProcessUnit" >> beam.ParDo(self._dofn)


class _Decode(beam.DoFn):
    """ImageRecord -> (ImageMeta, HxWx3 uint8); undecodable inputs -> 'errors' (stage decode)."""

    def __init__(self, spec: DecodeSpec):
        self._spec = spec
        self._metrics = _StageMetrics()

    def finish_bundle(self):
        self._metrics.flush_times()

    def process(self, record: ImageRecord):
        started = time.perf_counter()
        decoded = decode_record(record, self._spec)
        self._metrics.decode_seconds += time.perf_counter() - started
        if isinstance(decoded, ErrorRecord):
            self._metrics.decode_failed(decoded)
            yield beam.pvalue.TaggedOutput("errors", decoded)
            return
        self._metrics.decoded.inc()
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
