"""Writing a feature store: one unit's rows and error rows (`UnitWriter`), then the manifest.

Layout of an output directory:

    features/UNIT.ATTEMPT.parquet   feature rows of one work unit (or .h5 with --format hdf5)
    errors/UNIT.ATTEMPT.parquet     error rows of one work unit (only units with errors have one)
    features.h5               --format hdf5: every shard as one virtual dataset
    _featurize/               the journal: what is committed (pipeline.job.journal)
    manifest.json             written last, atomically: its presence means the output is complete

Features and errors live in folders of their own so `pandas.read_parquet("out/features")`,
DuckDB globs and embedding-reader see one schema and no JSON.
"""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.job import journal

from pipeline.model import predictions
from pipeline.job.dedupe import HASH_DTYPE
from pipeline.job.hdf5 import VIRTUAL_STORE, ShardWriter, write_virtual_store
from pipeline.job.journal import join, write_json_atomically
from pipeline.store.schema import ERRORS_DIR, FEATURES_DIR, FINGERPRINT_KEY, INDEX_DIR, MANIFEST, STATE_DIR, UNITS_DIR
from pipeline.logs import JobError
from pipeline.elements import STAGES, ErrorRecord

SKIPPED_FILE = f"{STATE_DIR}/skipped.txt"
LISTED_LIMIT = 1000  # skipped / removed keys listed in the manifest itself; the rest in a file
# Everything this tool writes into an output directory (for --overwrite): only its own files.
OWNED_PATTERNS = (*(f"{folder}/{prefix}*" for folder in (FEATURES_DIR, ERRORS_DIR) for prefix in journal.UNIT_PREFIXES),
                  f"{STATE_DIR}/**", VIRTUAL_STORE, f"{VIRTUAL_STORE}.tmp", MANIFEST, f"{INDEX_DIR}/**")
# Parquet row groups: large enough for fast scans, small enough to bound a worker's buffer.
ROW_GROUP_BYTES = 32 << 20

ERROR_SCHEMA = pa.schema([
    ("key", pa.string()), ("uri", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])


def feature_schema(outputs: dict[str, int], dtype: str, fingerprint: dict[str, Any]) -> pa.Schema:
    """key, uri, width, height, then one fixed_size_list<dtype>[D] column per model output, then
    with --predictions K: predicted_ids list<int32>[K], predicted_names list<string>[K],
    predicted_scores list<float32>[K]."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    fields = [("key", pa.string()), ("uri", pa.string()), ("width", pa.int32()), ("height", pa.int32())]
    fields += [(name, pa.list_(value_type, dim)) for name, dim in outputs.items()]
    top = fingerprint.get("predictions") or 0
    if top:
        fields += [(predictions.IDS, pa.list_(pa.int32(), top)), (predictions.NAMES, pa.list_(pa.string(), top)),
                   (predictions.SCORES, pa.list_(pa.float32(), top))]
    return pa.schema(fields, metadata={FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)})


def _numpy_dtype(value_type: pa.DataType) -> np.dtype:
    # Not DataType.to_pandas_dtype(): it imports pandas, which a plain install does not have.
    kind = "float" if pa.types.is_floating(value_type) else "int"
    return np.dtype(f"{kind}{value_type.bit_width}")


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Row dicts -> an Arrow table; vectors go in as one flat array per column, not element by element."""
    columns = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if pa.types.is_fixed_size_list(field.type) and pa.types.is_string(field.type.value_type):
            flat = pa.array([item for value in values for item in value], pa.string())
            columns.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
        elif pa.types.is_fixed_size_list(field.type):
            flat = np.stack(values).astype(_numpy_dtype(field.type.value_type), copy=False).reshape(-1)
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), field.type.list_size))
        else:
            columns.append(pa.array(values, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class _ParquetRows:
    """Feature rows of one unit streamed into one Parquet file, a row group at a time."""
    suffix = ".parquet"

    def __init__(self, path: str, schema: pa.Schema):
        self._schema = schema
        row_bytes = sum(f.type.list_size * (32 if pa.types.is_string(f.type.value_type)
                                            else f.type.value_type.bit_width // 8)
                        for f in schema if pa.types.is_fixed_size_list(f.type)) + 64
        self._group_rows = max(64, min(8192, ROW_GROUP_BYTES // row_bytes))
        self._handle = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        # No dictionary encoding: vectors and keys never repeat, and building the dictionary before
        # falling back tripled the write cost and grew the file (bench/host_cost.py).
        self._writer = pq.ParquetWriter(self._handle, schema, compression="snappy", use_dictionary=False)
        self._buffer: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self._group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(rows_to_table(self._buffer, self._schema))
            self._buffer = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._handle.close()

    def abort(self) -> None:
        self._buffer = []
        try:
            self._writer.close()
        finally:
            self._handle.close()


class UnitWriter:
    """Collects one work unit's feature rows and error rows, then commits them as a whole.

    Files are written under the journal's tmp/ with a name of their own per attempt; `commit`
    moves them to `features/UNIT.ATTEMPT.*` and `errors/UNIT.ATTEMPT.parquet` and writes the
    journal entry. `abort` (a failed attempt) removes what was written.
    """

    def __init__(self, output: str, unit_id: str, fmt: str, fingerprint: dict[str, Any]):
        self.output, self.unit_id, self._format, self._fingerprint = output, unit_id, fmt, fingerprint
        self._attempt = uuid.uuid4().hex[:8]
        self._final_name = f"{unit_id}.{self._attempt}"  # per attempt: see pipeline.job.journal
        self._rows = None
        self.row_count = 0
        self.errors: list[ErrorRecord] = []
        self._temporaries: list[str] = []

    def _temporary(self, name: str) -> str:
        path = journal.temp_path(self.output, self.unit_id, self._attempt, name)
        self._temporaries.append(path)
        return path

    def add_row(self, row: dict[str, Any]) -> None:
        if self._rows is None:
            fp = self._fingerprint
            if self._format == "hdf5":
                self._rows = ShardWriter(self._temporary("features.h5"), fp["outputs"], fp["dtype"], fp)
            else:
                self._rows = _ParquetRows(self._temporary("features.parquet"),
                                          feature_schema(fp["outputs"], fp["dtype"], fp))
        self._rows.append(row)
        self.row_count += 1

    def add_error(self, error: ErrorRecord) -> None:
        self.errors.append(error)

    def commit(self, entry: dict[str, Any], kept_keys: np.ndarray | None = None) -> dict[str, Any]:
        """Close the files, move them into place and write the unit's journal entry."""
        written: dict[str, tuple[str, str]] = {}
        if self._rows is not None:
            self._rows.close()
            suffix = ".h5" if self._format == "hdf5" else ".parquet"
            written["features"] = (self._temporaries[0], f"{FEATURES_DIR}/{self._final_name}{suffix}")
        if self.errors:
            path = self._temporary("errors.parquet")
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                pq.write_table(pa.Table.from_pylist([e._asdict() for e in self.errors], ERROR_SCHEMA), handle,
                               compression="snappy")
            written["errors"] = (path, f"{ERRORS_DIR}/{self._final_name}.parquet")
        if kept_keys is not None:
            path = self._temporary("keys.npy")
            journal.save_kept_keys(path, kept_keys.astype(HASH_DTYPE, copy=False))
            written["keys"] = (path, f"{UNITS_DIR}/{self._final_name}.keys.npy")
        by_stage = {stage: 0 for stage in STAGES}
        by_type: dict[str, int] = {}
        examples: dict[str, str] = {}
        for error in self.errors:
            by_stage[error.stage] += 1
            kind = f"{error.stage} {error.error_type}"
            by_type[kind] = by_type.get(kind, 0) + 1
            examples.setdefault(kind, f"{error.key}: {' '.join(error.message.split())[:160]}")
        entry = dict(entry, unit=self.unit_id, rows=self.row_count, errors=len(self.errors), errors_by_stage=by_stage,
                     errors_by_type=by_type, error_examples=examples)
        if entry["inputs"] != entry["rows"] + entry["errors"]:
            raise RuntimeError(f"unit {self.unit_id} lost track of inputs: {entry['inputs']} read but "
                               f"{entry['rows']} rows + {entry['errors']} error rows")
        return journal.commit_unit(self.output, entry, written)

    def abort(self) -> None:
        if self._rows is not None:
            self._rows.abort()
        leftovers = [path for path in self._temporaries if FileSystems.exists(path)]
        if leftovers:
            FileSystems.delete(leftovers)


ERROR_RATE_SAMPLE = 1000  # --max-error-rate judges once min(this, all inputs) are done
SUMMARY_ERROR_RATE = 0.10  # above this the run summary says so, even without --max-error-rate


def most_common_errors(entries: Iterable[dict[str, Any]], top: int = 5) -> list[dict[str, Any]]:
    """[{"error": "decode UnidentifiedImageError", "count": 312, "example": "key: message"}, ...]."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for entry in entries:
        for kind, count in entry.get("errors_by_type", {}).items():
            counts[kind] = counts.get(kind, 0) + count
            examples.setdefault(kind, entry.get("error_examples", {}).get(kind, ""))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [{"error": kind, "count": count, "example": examples[kind]} for kind, count in ranked]


def check_error_rate(inputs: int, errors: int, entries: Iterable[dict[str, Any]], limit: float | None,
                     expected: int | None = None) -> None:
    """Raise JobError when more than `limit` of at least min(1000, expected or all) inputs are error rows."""
    if limit is None or not inputs or inputs < min(ERROR_RATE_SAMPLE, expected or inputs):
        return
    if errors / inputs > limit:
        top = most_common_errors(entries, top=1)
        common = f"; most common: {top[0]['error']} ({top[0]['count']:,}), e.g. {top[0]['example']}" if top else ""
        raise JobError(f"{errors / inputs:.1%} of {inputs:,} inputs are error rows, more than --max-error-rate "
                       f"{limit:g}{common}; the run stopped without a manifest: fix the inputs or raise the "
                       f"rate, then run again with --resume")


def _parquet_rows(path: str) -> int:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def finalize_store(output: str, template: dict[str, Any], started_at: float,
                   expected_units: Iterable[str] = ()) -> dict[str, Any]:
    """Count every committed unit, check nothing was lost, build features.h5 (HDF5), write the manifest.

    `template` is the manifest so far (format, config, fingerprint, runner, and the planner's
    `counts` of reused / skipped / removed inputs); `expected_units` are the units this run had
    to process, each of which must now be committed.
    """
    entries = journal.committed_units(output)
    expected_units = set(expected_units)
    missing = sorted(expected_units - set(entries))
    if missing:
        raise RuntimeError(f"{len(missing)} work units were not committed (first: {missing[0]}); "
                           f"the output is incomplete and has no manifest: run again with --resume")
    entries = [entries[unit] for unit in sorted(entries)]
    for entry in entries:
        if entry["inputs"] != entry["rows"] + entry["errors"]:
            raise RuntimeError(f"unit {entry['unit']} lost track of inputs; the output has no manifest")
    feature_files = [entry["files"]["features"] for entry in entries if "features" in entry["files"]]
    error_files = [entry["files"]["errors"] for entry in entries if "errors" in entry["files"]]
    by_stage = {stage: sum(entry["errors_by_stage"].get(stage, 0) for entry in entries) for stage in STAGES}
    counts = dict(template.get("counts", {}))
    counts.update(inputs=sum(e["inputs"] for e in entries), rows=sum(e["rows"] for e in entries),
                  errors=sum(e["errors"] for e in entries), errors_by_stage=by_stage)
    if template["format"] == "hdf5":
        fingerprint = template["fingerprint"]
        rows = write_virtual_store(output, [join(output, path) for path in feature_files],
                                   fingerprint["outputs"], fingerprint["dtype"], fingerprint)
    else:
        rows = sum(_parquet_rows(join(output, path)) for path in feature_files)
    if rows != counts["rows"]:  # the files must hold what the journal says, or nothing claims completeness
        raise RuntimeError(f"the feature files hold {rows} rows but the journal says {counts['rows']}; "
                           f"the output has no manifest")
    this_run = [entry for entry in entries if entry["unit"] in expected_units]
    check_error_rate(sum(e["inputs"] for e in this_run), sum(e["errors"] for e in this_run), this_run,
                     template.get("config", {}).get("max_error_rate"))
    journal.remove_orphans(output, entries)
    journal.failpoint("manifest")
    elapsed = time.time() - started_at
    processed = counts["inputs"] - counts.get("reused", 0)
    if any("batch_size" in entry for entry in this_run):  # some worker ran out of accelerator memory
        template = dict(template, out_of_memory={
            "smallest_batch_size": min(e["batch_size"] for e in this_run if "batch_size" in e),
            "units": sum("batch_size" in e for e in this_run)})
    document = dict(template, counts=counts, files={"features": feature_files, "errors": error_files},
                    errors_top=most_common_errors(entries),
                    units={"committed": len(entries), "processed": len(expected_units)},
                    wall_time_s=round(elapsed, 3),
                    images_per_s=round(processed / elapsed, 3) if elapsed > 0 else None,
                    finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomically(join(output, MANIFEST), document)
    return document


class _Finalize(beam.DoFn):
    """Runs once, after every unit of the run is committed (its side input is their journal entries)."""

    def __init__(self, output: str, template: dict[str, Any], started_at: float, expected_units: list[str]):
        self._output, self._template, self._started_at = output, template, started_at
        self._expected = expected_units

    def process(self, _, entries):
        yield finalize_store(self._output, self._template, self._started_at, self._expected)


class WriteManifest(beam.PTransform):
    """Input: the journal entries of the units this run committed. Output: the manifest document,
    written once every unit is committed; `expected_units` (the run's plan) must all be there
    (see `finalize_store`)."""

    def __init__(self, output: str, template: dict[str, Any], started_at: float, expected_units: list[str]):
        super().__init__()
        self._output, self._template, self._started_at = output, template, started_at
        self._expected = list(expected_units)

    def expand(self, entries):
        return (entries.pipeline
                | "Trigger" >> beam.Create([None])
                | "Finalize" >> beam.ParDo(_Finalize(self._output, self._template, self._started_at, self._expected),
                                           beam.pvalue.AsList(entries)))
