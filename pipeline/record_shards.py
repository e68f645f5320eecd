"""Shards of records with named fields: TFRecord files of `tf.train.Example`, and Parquet files
with an image-bytes column (img2dataset's parquet output, a table exported by a data tool).

Field rules (docs/design.md, README "Inputs"): the image is the `--image-field` feature or
column, by default the first present of `IMAGE_FIELDS`; the key is the `--key-field`, by
default the first present of `KEY_FIELDS`, else `SHARD:INDEX` (the shard's path below the key
root and the record's position in it). Every record is one ImageRecord or one read
ErrorRecord; a shard that breaks keeps the records before the break and makes one error row
for the rest. Records are streamed: a TFRecord record at a time, a Parquet row group at a time.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.records import ErrorRecord, ImageRecord, RecordFields, ScanMismatch, error_from_exception
from pipeline.retries import is_transient
from pipeline.tfrecord import TFRecordError, iter_records, parse_example

IMAGE_FIELDS = ("image/encoded", "jpg", "jpeg", "png", "webp", "image")
KEY_FIELDS = ("key", "image/filename")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")
PARQUET_SUFFIXES = (".parquet",)
PARQUET_BATCH_ROWS = 256
# What a broken shard raises while it is read (a transient OSError is told apart by the caller).
RECORD_READ_ERRORS = (TFRecordError, OSError, EOFError, zlib.error, pa.ArrowException)


class ShardFieldError(ValueError):
    """A shard without the image field it is asked for: one sentence naming the fields it has."""


@dataclass(frozen=True)
class _Record:
    """One record's image bytes and key, or why it has none."""
    index: int
    key: str
    image: bytes | None
    problem: str = ""  # why `image` is None
    error_type: str = "MissingImage"


def record_uri(shard: str, index: int) -> str:
    return f"{shard}#{index}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first_present(names: Mapping[str, Any] | list[str], wanted: str | None, defaults: tuple[str, ...]) -> str | None:
    if wanted is not None:
        return wanted if wanted in names else None
    return next((name for name in defaults if name in names), None)


def _missing_image(fields: RecordFields, names) -> str:
    wanted = repr(fields.image) if fields.image else f"any of {', '.join(IMAGE_FIELDS)}"
    return (f"has no image field {wanted}; its fields: {', '.join(sorted(names)) or 'none'} "
            f"(choose one with --image-field)")


# --------------------------------------------------------------------------- TFRecord


def _open(shard: str):
    # AUTO: `.gz` is gunzipped while streaming, a plain `.tfrecord` is read as is.
    return FileSystems.open(shard, compression_type=CompressionTypes.AUTO)


def _example_record(index: int, data: bytes, fields: RecordFields, shard_name: str) -> _Record:
    default_key = f"{shard_name}:{index}"
    try:
        example = parse_example(data)
    except TFRecordError as exc:
        return _Record(index, default_key, None, f"record {index} is not a tf.train.Example ({exc})",
                       "TFRecordError")
    key_field = _first_present(example, fields.key, KEY_FIELDS)
    key = _text(example[key_field][0]) if key_field and example[key_field] else ""
    image_field = _first_present(example, fields.image, IMAGE_FIELDS)
    values = example.get(image_field, []) if image_field else []
    if not values or not isinstance(values[0], bytes):
        return _Record(index, key or default_key, None, f"record {index} {_missing_image(fields, example)}")
    return _Record(index, key or default_key, values[0])


def _tfrecord_records(shard: str, fields: RecordFields, shard_name: str) -> Iterator[_Record]:
    with _open(shard) as handle:
        for index, data in enumerate(iter_records(handle)):
            yield _example_record(index, data, fields, shard_name)


# --------------------------------------------------------------------------- Parquet


def _parquet_records(shard: str, fields: RecordFields, shard_name: str,
                     keys_only: bool = False) -> Iterator[_Record]:
    with FileSystems.open(shard, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        table = pq.ParquetFile(handle)
        names = table.schema_arrow.names
        image_field = _first_present(names, fields.image, IMAGE_FIELDS)
        key_field = _first_present(names, fields.key, KEY_FIELDS)
        if image_field is None:
            raise ShardFieldError(f"Parquet shard {shard} {_missing_image(fields, names)}")
        columns = [name for name in (None if keys_only else image_field, key_field) if name]
        index = 0
        if not columns:  # keys only, and they are positions: no column to read
            for index in range(table.metadata.num_rows):
                yield _Record(index, f"{shard_name}:{index}", None)
            return
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            images = batch.column(image_field).to_pylist() if not keys_only else [None] * batch.num_rows
            keys = batch.column(key_field).to_pylist() if key_field else [None] * batch.num_rows
            for image, key in zip(images, keys):
                key = _text(key) if key not in (None, "", b"") else f"{shard_name}:{index}"
                problem = "" if image is not None or keys_only else f"row {index}'s {image_field!r} is empty (null)"
                yield _Record(index, key, image, problem)
                index += 1


# --------------------------------------------------------------------------- both

_READERS = {"tfrecord": _tfrecord_records, "parquet": _parquet_records}


def scan_record_keys(layout: str, shard: str, fields: RecordFields, shard_name: str) -> list[str]:
    """Every record's key, in record order (Parquet reads the key column only). A shard that
    breaks gives the keys before the break: reading stops at the same place."""
    keys: list[str] = []
    reader = _READERS[layout]
    records = (reader(shard, fields, shard_name, keys_only=True) if layout == "parquet"
               else reader(shard, fields, shard_name))
    try:
        for record in records:
            keys.append(record.key)
    except (*RECORD_READ_ERRORS, ShardFieldError) as exc:
        if is_transient(exc):
            raise
        # the reading pass stops at the same place and reports it as an error row
    return keys


def read_record_shard(layout: str, shard: str, fields: RecordFields, shard_name: str,
                      losers: Mapping[int, str] | None = None,
                      scanned: int | None = None) -> Iterator[ImageRecord | ErrorRecord]:
    """A shard's records as ImageRecords (uri `SHARD#INDEX`) or read ErrorRecords.

    `losers` maps record positions whose key another record keeps to where it is kept
    (DuplicateKey error rows); `scanned` is how many records the key scan saw (reading more
    raises ScanMismatch). A transient failure raises: the unit is retried.
    """
    losers = losers or {}
    position = 0
    try:
        for record in _READERS[layout](shard, fields, shard_name):
            position = record.index + 1
            uri = record_uri(shard, record.index)
            if scanned is not None and record.index >= scanned:
                raise ScanMismatch(f"{shard}: the key scan saw {scanned} records, reading finds more; the shard "
                                   f"changed or the scan failed, so duplicate keys were not checked")
            if record.index in losers:
                yield ErrorRecord(record.key, uri, "read", "DuplicateKey",
                                  f"key {record.key!r} also comes from {losers[record.index]}; kept that one")
            elif record.image is None:
                yield ErrorRecord(record.key, uri, "read", record.error_type, record.problem)
            else:
                yield ImageRecord(record.key, uri, record.image)
    except ShardFieldError as exc:
        yield error_from_exception(shard_name, shard, "read", exc)
    except RECORD_READ_ERRORS as exc:
        if is_transient(exc):
            raise
        # The rest of the shard from the first record not read: one error row, keyed by where it broke
        # (by the shard itself when nothing of it could be read: missing, not a TFRecord / Parquet file).
        if position:
            yield error_from_exception(f"{shard_name}:{position}", record_uri(shard, position), "read", exc)
        else:
            yield error_from_exception(shard_name, shard, "read", exc)


def read_record_image(layout: str, shard: str, index: int, fields: RecordFields = RecordFields()) -> bytes:
    """The image bytes of record `index` of a shard (a row's uri `SHARD#INDEX`)."""
    for record in _READERS[layout](shard, fields, ""):
        if record.index == index:
            if record.image is None:
                raise FileNotFoundError(record.problem)
            return record.image
    raise FileNotFoundError(f"{shard} has no record {index}")


def shard_fields(layout: str, shard: str) -> list[str]:
    """The field names of a shard's first record (TFRecord) or its columns (Parquet): for the
    launcher's check that the image field exists."""
    if layout == "parquet":
        with FileSystems.open(shard, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    with _open(shard) as handle:
        for data in iter_records(handle):
            return list(parse_example(data))
    return []
