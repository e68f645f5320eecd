"""The run's own stages: `PlannedUnits` (the plan's units, with the members that lose a duplicate key) and
`ProcessUnits` (read -> decode -> infer -> write -> commit, one work unit per DoFn call).

Each unit is read, decoded, run through the backbone in fixed-size batches and written by one
DoFn call, then committed, from `process()`, so a unit is in the store as soon as it is done
(the local runner would only run a `finish_bundle` at the very end of the stage) and nothing per
image crosses a shuffle. The counters every stage reports (`RunCounters`), decoding one record
(`decode_record`) and a store row (`feature_row`) are shared with the library transforms
(`pipeline.transforms`).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline.elements import METRICS_NAMESPACE, ErrorRecord, ImageMeta, ImageRecord, WorkUnit, error_from_exception
from pipeline.images import DECODE_ERRORS, Canvas, DecodeSpec, decode_for_model
from pipeline.inputs.reading import unit_records
from pipeline.inputs.retries import retry_transient
from pipeline.job import journal
from pipeline.job.dedupe import FindDuplicateKeys, items_tagged, key_hashes
from pipeline.job.entries import ErrorCounts, UnitEntry
from pipeline.job.handout import Handout, hand_out
from pipeline.job.manifest import check_error_rate
from pipeline.job.plan_files import PENDING, STORE, UploadedPlan, read_plan_part
from pipeline.job.progress import ProgressWriter
from pipeline.job.writer import UnitWriter
from pipeline.model.handler import KerasBackboneHandler, LoadedModel
from pipeline.model.predictions import CLASSIFIER_OUTPUT, top_classes

class _ErrorTally:
    """What a worker process committed for one job: inputs and error rows, for --max-error-rate. Kept per
    process, not per DoFn instance: the DaskRunner runs setup() for every partition (one unit each),
    so an instance sees a single unit."""

    _lock = threading.Lock()
    _jobs: dict[str, "_ErrorTally"] = {}

    def __init__(self):
        self.inputs = 0
        self.errors = ErrorCounts()

    @classmethod
    def of(cls, job: str) -> "_ErrorTally":
        with cls._lock:
            return cls._jobs.setdefault(job, cls())

    def check(self, entry: UnitEntry, limit: float | None, expected: int | None) -> None:
        """Count a committed entry, then stop the run if this process has seen too many error rows."""
        with self._lock:
            self.inputs += entry.inputs
            self.errors.merge(entry.errors)
            check_error_rate(self.inputs, self.errors, limit, expected)


def decode_record(record: ImageRecord, spec: DecodeSpec) -> tuple[ImageMeta, np.ndarray | Canvas] | ErrorRecord:
    """(meta, HxWx3 uint8, or a Canvas for a model that resizes) for a decodable image; a decode ErrorRecord
    otherwise."""
    try:
        pixels, (width, height) = decode_for_model(record.data, spec)
    except DECODE_ERRORS as exc:  # a bad image is one error row; anything else is a bug that fails the bundle
        return error_from_exception(record.key, record.uri, "decode", exc)
    return ImageMeta(record.key, record.uri, width, height), pixels


class RunCounters:
    """The `featurize` counters every stage reports (see README, Progress and metrics).

    Counts are collected in `pending` and reported by `flush()`: once per committed unit
    (a unit retried after a transient failure counts once), once per bundle for the readers.
    """

    def __init__(self):
        self.pending: Counter[str] = Counter()
        self.read_seconds = self.decode_seconds = 0.0

    def flush(self) -> None:
        # Times summed, then counted once: a millisecond counter bumped per image would round small images to 0.
        self.pending.update(read_ms=int(round(self.read_seconds * 1000)),
                            decode_ms=int(round(self.decode_seconds * 1000)))
        for name, value in self.pending.items():
            if value:
                Metrics.counter(METRICS_NAMESPACE, name).inc(value)
        self.discard()

    def merge(self, other: "RunCounters") -> None:
        """Add what `other` counted (a batch read on the decode thread) to these counts."""
        self.pending.update(other.pending)
        self.read_seconds += other.read_seconds
        self.decode_seconds += other.decode_seconds

    def discard(self) -> None:
        self.pending = Counter()
        self.read_seconds = self.decode_seconds = 0.0

    def read(self, item: ImageRecord | ErrorRecord) -> None:
        self.pending["inputs"] += 1
        if isinstance(item, ErrorRecord):
            self.pending["read_errors"] += 1
        else:
            self.pending["bytes_read"] += len(item.data)

    def decoded(self, result: tuple[ImageMeta, np.ndarray] | ErrorRecord) -> None:
        if isinstance(result, ErrorRecord):
            self.pending.update(["decode_errors", f"decode_errors_{result.error_type}"])
        else:
            self.pending["decoded"] += 1


def _timed(iterator: Iterator, metrics: RunCounters) -> Iterator:
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


@dataclass
class ReadBatch:
    """What reading and decoding one batch of a unit produced, to be applied by the unit's thread in order:
    the inputs read up to and including the one that filled the batch (or up to the unit's end)."""
    examples: list[tuple[ImageMeta, np.ndarray | Canvas]] = field(default_factory=list)  # decoded, for the model
    errors: list[ErrorRecord] = field(default_factory=list)  # read and decode error rows, in reading order
    kept_keys: list[str] = field(default_factory=list)  # keys these inputs hold (not a duplicate's)
    inputs: int = 0
    decoded: int = 0  # decode attempts (the progress line's images)
    unreadable: bool = False  # an input could not be read: the unit is committed for a --resume to retry
    last: bool = False  # the unit's records are exhausted
    counters: RunCounters = field(default_factory=RunCounters)


def read_batch(records: Iterator[ImageRecord | ErrorRecord], spec: DecodeSpec, batch_size: int) -> ReadBatch:
    """Read and decode from `records` until `batch_size` images are decoded or the records end. Touches
    nothing but what it returns (it runs on the decode thread); raises what reading or decoding raises
    beyond a bad input."""
    batch = ReadBatch()
    metrics = batch.counters
    while len(batch.examples) < batch_size:
        started = time.perf_counter()
        item = next(records, _END)
        metrics.read_seconds += time.perf_counter() - started
        if item is _END:
            batch.last = True
            break
        batch.inputs += 1
        metrics.read(item)
        if isinstance(item, ErrorRecord):
            batch.errors.append(item)
            if item.error_type != "DuplicateKey":
                batch.kept_keys.append(item.key)  # an unreadable input still holds its key
                batch.unreadable = True
            continue
        batch.kept_keys.append(item.key)
        started = time.perf_counter()
        decoded = decode_record(item, spec)
        metrics.decode_seconds += time.perf_counter() - started
        metrics.decoded(decoded)
        batch.decoded += 1
        if isinstance(decoded, ErrorRecord):
            batch.errors.append(decoded)
        else:
            batch.examples.append(decoded)
    return batch


_END = object()


@dataclass(frozen=True)
class UnitSettings:
    """What `ProcessUnits` needs of a run besides its model."""
    output: str
    decode: DecodeSpec
    format: str  # parquet or hdf5
    fingerprint: dict[str, Any]  # the store's: outputs and dtype of its rows
    batch_size: int
    progress_dir: str | None = None  # local runners: where the progress line reads finished images
    max_error_rate: float | None = None
    expected_inputs: int | None = None  # the run's inputs when known before reading (files)
    class_names: list[str] | None = None  # --predictions: every class's name


class _ProcessUnit(beam.DoFn):
    """(WorkUnit, {member position: where its key is kept}, image members scanned or None)
    -> the unit's journal entry (UnitEntry), once committed."""

    def __init__(self, handler: KerasBackboneHandler, settings: UnitSettings):
        self._handler, self._settings = handler, settings
        self._top = TopClasses(settings.fingerprint.get("predictions") or 0, settings.class_names)
        self._model_tag = LoadedModel.new_tag()  # pickled: one tag for every worker of the job
        self._dtype = np.dtype(settings.fingerprint["dtype"])

    def setup(self):
        progress_dir = self._settings.progress_dir
        self._model = LoadedModel(self._handler, self._model_tag)
        self._tally = _ErrorTally.of(self._model_tag)  # this process's committed units, for --max-error-rate
        self._metrics = RunCounters()
        self._progress = ProgressWriter(progress_dir) if progress_dir and os.path.isdir(progress_dir) else None

    def process(self, element: tuple[WorkUnit, dict[int, str], int | None]):
        unit, losers, scanned = element
        settings = self._settings
        committed = journal.read_journal(settings.output, unit.unit_id)
        if committed is not None and committed.is_final:  # an earlier attempt of this job committed it
            yield committed
            return
        # A transient read failure (connection reset, timeout) redoes the whole unit: nothing of it is kept.
        committed = retry_transient(lambda: self._attempt(unit, losers, scanned), f"unit {unit.unit_id}")
        self._metrics.flush()
        if self._progress:
            self._progress.unit_done()
        # Stop early on what this worker has seen; the manifest step judges the whole run.
        self._tally.check(committed, settings.max_error_rate, settings.expected_inputs)
        yield committed

    def _attempt(self, unit: WorkUnit, losers: dict[int, str], scanned: int | None) -> UnitEntry:
        settings = self._settings
        writer = UnitWriter(settings.output, unit.unit_id, settings.format, settings.fingerprint)
        started_at = journal.now()
        try:
            entry, kept = self._write_unit(unit, losers, scanned, writer)
            committed = writer.commit(replace(entry, started_at=started_at), kept)
        except BaseException:
            writer.abort()
            self._metrics.discard()
            raise
        self._metrics.pending["units"] += 1
        return committed

    def _write_unit(self, unit: WorkUnit, losers: dict[int, str], scanned: int | None,
                    writer: UnitWriter) -> tuple[UnitEntry, np.ndarray | None]:
        """Every input of the unit into `writer`; the unit's entry (before its counts) and, for a shard, the
        hashes of the keys it keeps."""
        settings, inputs, kept_keys, unreadable = self._settings, 0, [], False
        records = unit_records(unit, losers, scanned)
        # Decode beside the model: a thread reads and decodes batch k+1 while this one runs the model on batch
        # k (Pillow releases the GIL while it decodes), one batch ahead. A batch's side effects (error rows,
        # counters, progress) are applied here, in reading order, before its inference: the writer sees the
        # same calls in the same order as reading, decoding and inferring in turn.
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="featurize-decode") as decoder:
                ahead = decoder.submit(read_batch, records, settings.decode, settings.batch_size)
                while True:
                    batch = ahead.result()  # an exception of the decode thread is raised here, as it was inline
                    if not batch.last:
                        ahead = decoder.submit(read_batch, records, settings.decode, settings.batch_size)
                    inputs += batch.inputs
                    kept_keys += batch.kept_keys
                    unreadable |= batch.unreadable
                    self._metrics.merge(batch.counters)
                    if self._progress and batch.decoded:
                        self._progress.add(batch.decoded)
                    for error in batch.errors:
                        writer.add_error(error)
                    if batch.examples:
                        self._infer(batch.examples, writer)
                    if batch.last:  # a last batch is never full: the failpoint counts full batches only
                        break
                    journal.failpoint("unit-read")
        finally:
            records.close()  # after the decode thread has stopped: a generator runs in one thread at a time
        size = self._model.current_batch_size()
        entry = UnitEntry(
            unit.unit_id, unit.layout, unit.source, inputs,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            batch_size=size if size is not None and size < settings.batch_size else None,
            retry=unreadable)  # a missing shard or file may be there next time: a --resume reads this unit again
        if unit.layout == "files":
            return replace(entry, keys=tuple(sorted({key for key, _ in unit.members} | {e.key for e in unit.rejected})),
                           rejected=tuple(sorted((e.key, e.uri) for e in unit.rejected))), None
        return entry, key_hashes(kept_keys)

    def _infer(self, batch: list[tuple[ImageMeta, np.ndarray]], writer: UnitWriter) -> None:
        # A batch that fails is bisected: only inputs that fail alone become error rows (pipeline.model.failures).
        predictions, failures = self._model.infer(batch)
        for position, exc in failures:
            meta = batch[position][0]
            writer.add_error(error_from_exception(meta.key, meta.uri, "infer", exc))
        self._metrics.pending["infer_errors"] += len(failures)
        for prediction in predictions:
            if prediction is not None:
                meta, outputs = prediction
                writer.add_row(feature_row(meta, outputs, self._dtype, self._top))
                self._metrics.pending["rows"] += 1


class TopClasses(NamedTuple):
    """--predictions: how many classes a row keeps (0: none) and their names."""
    k: int = 0
    names: list[str] | None = None


def feature_row(meta: ImageMeta, outputs: dict[str, np.ndarray], dtype: np.dtype,
                top: TopClasses = TopClasses()) -> dict[str, Any]:
    """A store row; the classifier's probabilities (output `predictions`) become the top-K columns."""
    row = {"key": meta.key, "uri": meta.uri, "width": meta.width, "height": meta.height}
    for name, vector in outputs.items():
        if name == CLASSIFIER_OUTPUT:
            row.update(top_classes(np.asarray(vector), top.k, top.names))
        else:
            row[name] = np.asarray(vector, dtype=dtype)
    return row


def _with_losers(joined):
    _, groups = joined
    scanned = groups["scanned"][0] if groups["scanned"] else None
    return [(unit, dict(groups["losers"]), scanned) for unit in groups["unit"]]


def with_losers(units: beam.PCollection, store: beam.PCollection | None, output: str) -> beam.PCollection:
    """(WorkUnit, {member position: where its key is kept}, inputs the key scan saw or None) for each
    unit, spread over the workers by a shuffle of units (never of images). `store`: (WorkUnit,
    journal entry or None) of every shard unit of the store (committed ones read from `output`),
    whose keys are checked against each other (`pipeline.job.dedupe`); None for files units."""
    if store is None:
        return (units | "Spread" >> beam.Reshuffle()
                | "NoLosers" >> beam.Map(lambda unit: (unit, {}, None)))
    found = store | "DuplicateKeys" >> FindDuplicateKeys(output)
    keyed = units | "Keyed" >> beam.Map(lambda unit: (unit.unit_id, unit))
    return ({"unit": keyed, "losers": found["losers"], "scanned": found["scanned"]}
            | "JoinLosers" >> beam.CoGroupByKey()  # also spreads the units over the workers
            | "WithLosers" >> beam.FlatMap(_with_losers))


class PlannedUnits(beam.PTransform):
    """The units of a run's plan, read from the store by the workers (`pipeline.job.plan_files`),
    each with the members that must give up a duplicate key (see `with_losers`).

    Input: a pipeline root. The graph holds the plan's folder and file count only, so it is the
    same size for 10^4 files and 10^8.
    """

    def __init__(self, plan: UploadedPlan, output: str):
        super().__init__()
        self._plan, self._output = plan, output

    def expand(self, pbegin):
        records = (pbegin | "PlanParts" >> beam.Create(list(range(self._plan.parts)))
                   | "SpreadPlanParts" >> beam.Reshuffle()
                   | "ReadPlan" >> beam.FlatMap(read_plan_part, self._plan))
        units = records | "Units" >> beam.FlatMap(items_tagged(PENDING))
        store = None
        if self._plan.shards:
            store = records | "StoreUnits" >> beam.FlatMap(items_tagged(STORE))
        return with_losers(units, store, self._output)


class ReadUnit(beam.DoFn):
    """(WorkUnit, losers) -> its ImageRecords; read errors (and duplicate keys) -> 'errors'."""

    def setup(self):
        self._metrics = RunCounters()

    def finish_bundle(self):
        self._metrics.flush()

    def process(self, element):
        for item in _timed(unit_records(*element), self._metrics):
            self._metrics.read(item)
            if isinstance(item, ErrorRecord):
                yield beam.pvalue.TaggedOutput("errors", item)
            else:
                yield item


class ProcessUnits(beam.PTransform):
    """Read -> decode -> infer -> write -> commit, one work unit per element.

    Input: a PCollection of (WorkUnit, {member position: where its key is kept}, members scanned) (see
    `with_losers`). Output: the journal entry (UnitEntry) of every unit, once committed into
    `settings.output` (see `pipeline.job.journal`). Every input of a unit ends in exactly one place: a
    feature row or an error row (stages read, decode, infer). With a `handout` (local runners with several
    workers) the workers take the units as they free up (`pipeline.job.handout`); otherwise the runner
    spreads them.
    """

    def __init__(self, handler: KerasBackboneHandler, settings: UnitSettings, handout: Handout | None = None):
        super().__init__()
        self._handout = handout
        self._dofn = _ProcessUnit(handler, settings) if handout is None else _ProcessHandedOut(handler, settings, handout)

    def expand(self, units):
        if self._handout is None:
            return units | "ProcessUnit" >> beam.ParDo(self._dofn)
        return hand_out(units, self._handout, self._dofn)


class _ProcessHandedOut(_ProcessUnit):
    """A worker's ticket -> the journal entries of the units it took from `units` (every unit of the run)."""

    def __init__(self, handler: KerasBackboneHandler, settings: UnitSettings, handout: Handout):
        super().__init__(handler, settings)
        self._handout = handout

    def process(self, ticket: int, units=()):
        for element in self._handout.taken(units):
            yield from super().process(element)
