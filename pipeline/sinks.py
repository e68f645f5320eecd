"""WriteFeatures: feature rows and error rows -> a feature store, then manifest.json.

Layout of an output directory:

    features/features-SSSSS-of-NNNNN.parquet   feature rows (Beam's Parquet sink, runner-chosen
                                               sharding: no shuffle of the rows)
    errors/errors-SSSSS-of-NNNNN.parquet       one row per failed input
    manifest.json                              written last, atomically, by the pipeline itself
                                               once every shard is final: its presence means the
                                               output is complete

Features and errors live in folders of their own so `pandas.read_parquet("out/features")`,
DuckDB globs and embedding-reader see one schema and no JSON.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from pipeline.hdf5 import VIRTUAL_STORE, Hdf5ShardSink, write_virtual_store
from pipeline.records import STAGES, ErrorRecord, relative_path

MANIFEST = "manifest.json"
FINGERPRINT_KEY = b"featurize.fingerprint"
FEATURES_DIR = "features"
ERRORS_DIR = "errors"
# Everything this tool writes into an output directory (for --overwrite), Beam's temp folders included.
OWNED_PATTERNS = (f"{FEATURES_DIR}/**", f"{ERRORS_DIR}/**", VIRTUAL_STORE, MANIFEST, MANIFEST + ".tmp")

ERROR_SCHEMA = pa.schema([
    ("key", pa.string()), ("uri", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])


def feature_schema(outputs: dict[str, int], dtype: str, fingerprint: dict[str, Any]) -> pa.Schema:
    """key, uri, width, height, then one fixed_size_list<dtype>[D] column per model output."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    fields = [("key", pa.string()), ("uri", pa.string()), ("width", pa.int32()), ("height", pa.int32())]
    fields += [(name, pa.list_(value_type, dim)) for name, dim in outputs.items()]
    return pa.schema(fields, metadata={FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)})


def _count_rows(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _count_errors_by_stage(paths: list[str]) -> dict[str, int]:
    by_stage = {stage: 0 for stage in STAGES}
    for path in paths:
        with FileSystems.open(path) as handle:
            stages = pq.read_table(handle, columns=["stage"]).column("stage").to_pylist()
        for stage in stages:
            by_stage[stage] = by_stage.get(stage, 0) + 1
    return by_stage


def write_json_atomically(path: str, document: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: readers see the whole file or none."""
    temporary = path + ".tmp"
    with FileSystems.create(temporary) as handle:
        handle.write(json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))
    try:
        FileSystems.rename([temporary], [path])
    except Exception:  # noqa: BLE001 - filesystems (HDFS) whose rename refuses to replace a file
        FileSystems.delete([path])
        FileSystems.rename([temporary], [path])


class _WriteManifest(beam.DoFn):
    """Runs once, after every shard is final: counts what was written and checks it."""

    def __init__(self, output: str, manifest: dict[str, Any], started_at: float):
        self._output = output
        self._manifest = manifest
        self._started_at = started_at

    def _finish_features(self, feature_files: list[str]) -> int:
        """Rows written; for HDF5 also the virtual store over every shard."""
        if self._manifest.get("format") == "hdf5":
            fingerprint = self._manifest["fingerprint"]
            return write_virtual_store(self._output, feature_files, fingerprint["outputs"],
                                       fingerprint["dtype"], fingerprint)
        return _count_rows(feature_files)

    def process(self, _, feature_files, error_files, inputs):
        feature_files, error_files = sorted(feature_files), sorted(error_files)
        rows = self._finish_features(feature_files)
        by_stage = _count_errors_by_stage(error_files)
        errors = sum(by_stage.values())
        if inputs != rows + errors:
            raise RuntimeError(
                f"featurize lost track of inputs: {inputs} read but {rows} feature rows + "
                f"{errors} error rows written; the output is incomplete and has no manifest")
        elapsed = time.time() - self._started_at
        document = dict(self._manifest)
        document.update({
            "counts": {"inputs": inputs, "rows": rows, "errors": errors, "errors_by_stage": by_stage},
            "files": {"features": [relative_path(p, self._output) for p in feature_files],
                      "errors": [relative_path(p, self._output) for p in error_files]},
            "wall_time_s": round(elapsed, 3),
            "images_per_s": round(inputs / elapsed, 3) if elapsed > 0 else None,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        write_json_atomically(FileSystems.join(self._output, MANIFEST), document)
        yield document


def _error_row(error: ErrorRecord) -> dict[str, str]:
    return error._asdict()


class WriteFeatures(beam.PTransform):
    """Write a feature store: feature shards, error shards, then manifest.json.

    Input: a dict with `rows` (row dicts from ExtractFeatures), `errors` (ErrorRecord from
    every stage) and `inputs` (a PCollection holding the number of inputs read, one int).
    `manifest` is the document to complete: it must hold `format` ("parquet" | "hdf5") and
    the `fingerprint`, whose `outputs` ({name: dim}) and `dtype` shape the store.
    Output: a PCollection with the manifest document once it is written.
    """

    def __init__(self, output: str, manifest: dict[str, Any], started_at: float | None = None):
        super().__init__()
        self._output = output
        self._manifest = manifest
        self._started_at = started_at or time.time()

    def _write_rows(self, rows):
        fingerprint = self._manifest["fingerprint"]
        prefix = FileSystems.join(self._output, FEATURES_DIR, "features")
        if self._manifest["format"] == "hdf5":
            return rows | "WriteRows" >> beam.io.Write(
                Hdf5ShardSink(prefix, fingerprint["outputs"], fingerprint["dtype"], fingerprint))
        schema = feature_schema(fingerprint["outputs"], fingerprint["dtype"], fingerprint)
        return rows | "WriteRows" >> WriteToParquet(prefix, schema, file_name_suffix=".parquet", codec="snappy")

    def expand(self, pcolls):
        feature_files = self._write_rows(pcolls["rows"])
        error_files = (
            pcolls["errors"]
            | "ErrorRows" >> beam.Map(_error_row)
            | "WriteErrors" >> WriteToParquet(
                FileSystems.join(self._output, ERRORS_DIR, "errors"), ERROR_SCHEMA,
                file_name_suffix=".parquet", codec="snappy"))
        return (
            pcolls["inputs"].pipeline
            | "ManifestTrigger" >> beam.Create([None])
            | "WriteManifest" >> beam.ParDo(
                _WriteManifest(self._output, self._manifest, self._started_at),
                beam.pvalue.AsList(feature_files), beam.pvalue.AsList(error_files),
                beam.pvalue.AsSingleton(pcolls["inputs"])))
