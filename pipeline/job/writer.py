"""Writing one work unit into a feature store: its rows and error rows (`UnitWriter`), committed whole.

Layout of an output directory:

    features/UNIT.ATTEMPT.parquet   feature rows of one work unit (or .h5 with --format hdf5)
    errors/UNIT.ATTEMPT.parquet     error rows of one work unit (only units with errors have one)
    features.h5               --format hdf5: every shard as one virtual dataset (pipeline.job.manifest)
    _featurize/               the journal: what is committed (pipeline.job.journal)
    manifest.json             written last, atomically (pipeline.job.manifest): the output is complete

Features and errors live in folders of their own so `pandas.read_parquet("out/features")`,
DuckDB globs and embedding-reader see one schema and no JSON.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.elements import ErrorRecord
from pipeline.job import dedupe, journal
from pipeline.job.entries import ErrorCounts, UnitEntry
from pipeline.job.hdf5 import ShardWriter
from pipeline.store.schema import ERROR_SCHEMA, ERRORS_DIR, FEATURES_DIR, UNITS_DIR, feature_schema

# Parquet row groups: large enough for fast scans, small enough to bound a worker's buffer.
ROW_GROUP_BYTES = 32 << 20


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
        self.error_counts = ErrorCounts()
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
        self.error_counts.add(error)

    def commit(self, entry: UnitEntry, kept_keys: np.ndarray | None = None) -> UnitEntry:
        """Close the files, move them into place and write the unit's journal entry (`entry` with the rows
        and error rows written here); returns the entry committed."""
        entry = replace(entry, rows=self.row_count, errors=self.error_counts)
        entry.check_counts()
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
            dedupe.save_kept_keys(path, kept_keys)
            written["keys"] = (path, f"{UNITS_DIR}/{self._final_name}.keys.npy")
        return journal.commit_unit(self.output, entry, written)

    def abort(self) -> None:
        if self._rows is not None:
            self._rows.abort()
        leftovers = [path for path in self._temporaries if FileSystems.exists(path)]
        if leftovers:
            FileSystems.delete(leftovers)
