"""Shards of records with named fields: TFRecord files of `tf.train.Example` (TensorFlow Datasets'
`NAME-SPLIT.tfrecord-00000-of-00016` among them), Parquet files (img2dataset's parquet output, a
table exported by a data tool, a Hugging Face dataset on the Hub) and Arrow IPC files (Hugging Face
`Dataset.save_to_disk`).

Field rules (docs/design.md, README "Inputs"): the image is the `--image-field` feature or
column, by default the first present of `IMAGE_FIELDS`; the key is the `--key-field`, by
default the first present of `KEY_FIELDS`, else `SHARD:INDEX` (the shard's path below the key
root and the record's position in it). Every record is one ImageRecord or one read
ErrorRecord; a shard that breaks keeps the records before the break and makes one error row
for the rest. Records are streamed: a TFRecord record at a time, a Parquet row group or an Arrow
record batch at a time.

A table's image column holds bytes, a path (a string), or the `datasets.Image()` struct
`{bytes, path}`: its bytes, else its path. Paths are relative to the shard's folder, absolute,
or URIs; a path's image is read like a listed file, and the row's uri is that path (the bytes
came from there). Any other column type is refused by the launcher (`check_record_fields`); a
value that is still not an image at run time (a null, a wrong type) is an error row.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import files
from pipeline.errors import ConfigError
from pipeline.elements import ErrorRecord, ImageRecord, RecordFields, ScanMismatch, error_from_exception
from pipeline.inputs.fetch import is_http, read_bytes, read_member
from pipeline.inputs.retries import is_transient
from pipeline.inputs.tfrecord import TFRecordError, iter_records, parse_example

IMAGE_FIELDS = ("image/encoded", "jpg", "jpeg", "png", "webp", "image")
KEY_FIELDS = ("key", "image/filename")
PARQUET_BATCH_ROWS = 256
# The Arrow IPC file format (Feather v2) is the stream format behind this 8-byte magic.
_ARROW_FILE_MAGIC = b"ARROW1\x00\x00"
# What a broken shard raises while it is read (a transient OSError is told apart by the caller).
RECORD_READ_ERRORS = (TFRecordError, OSError, EOFError, zlib.error, pa.ArrowException)


class ShardFieldError(ValueError):
    """A shard without the image field it is asked for: one sentence naming the fields it has."""


@dataclass(frozen=True)
class _Record:
    """One record's image bytes (or the path to read them from) and key, or why it has none."""
    index: int
    key: str
    image: bytes | None
    problem: str = ""  # why `image` and `path` are None
    error_type: str = "MissingImage"
    path: str | None = None  # a table's image given as a path: read it like a listed file


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
    if values and not isinstance(values[0], bytes):  # an int64_list or float_list feature
        kind = "int64" if isinstance(values[0], int) else "float"
        return _Record(index, key or default_key, None, f"record {index}'s {image_field!r} holds {kind} values, "
                       f"not image bytes", "WrongImageType")
    if not values:
        return _Record(index, key or default_key, None, f"record {index} {_missing_image(fields, example)}")
    return _Record(index, key or default_key, values[0])


def _tfrecord_records(shard: str, fields: RecordFields, shard_name: str) -> Iterator[_Record]:
    with files.open_read(shard, decompress=True) as handle:  # `.gz` gunzipped, a plain `.tfrecord` as is
        for index, data in enumerate(iter_records(handle)):
            yield _example_record(index, data, fields, shard_name)


# --------------------------------------------------------------------------- tables: Parquet, Arrow IPC


def _ipc_reader(handle: BinaryIO) -> pa.ipc.RecordBatchStreamReader:
    """Streams record batches from an Arrow IPC stream (what `datasets` writes) or file (Feather v2)."""
    if handle.read(len(_ARROW_FILE_MAGIC)) != _ARROW_FILE_MAGIC:
        handle.seek(0)  # the stream format: from the start
    return pa.ipc.open_stream(handle)


def _is_binary(kind: pa.DataType) -> bool:
    view = getattr(pa.types, "is_binary_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or view(kind)


def _is_string(kind: pa.DataType) -> bool:
    view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or view(kind)


def is_image_type(kind: pa.DataType) -> bool:
    """Bytes, a path, or the `datasets.Image()` struct<bytes: binary, path: string>."""
    if _is_binary(kind) or _is_string(kind):
        return True
    if not pa.types.is_struct(kind):
        return False
    children = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
    checks = {"bytes": _is_binary, "path": _is_string}
    return any(name in children for name in checks) and all(
        check(children[name]) for name, check in checks.items() if name in children)


def _resolve(path: str, folder: str) -> str:
    """A path from a table, relative to the shard's folder unless absolute or a URI."""
    if not files.is_local(path) or os.path.isabs(path):
        return path
    if not files.is_local(folder):  # gs://b/data + imgs/a.jpg: Beam's join keeps the scheme's slashes
        return files.join(folder, path)
    return os.path.normpath(os.path.join(folder, path))


def _has_filesystem(path: str) -> bool:
    if files.is_local(path) or is_http(path):
        return True
    try:
        FileSystems.get_filesystem(path)
    except ValueError:  # Beam's answer for a scheme with no installed filesystem (hf://, zip://)
        return False
    return True


def _value_record(index: int, key: str, value: Any, field: str, folder: str) -> _Record:
    """One table cell as image bytes, a path to read, or an error (null, neither, a wrong type)."""
    if isinstance(value, dict):  # datasets.Image(): its bytes, else its path
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        if value is None:
            return _Record(index, key, None, f"row {index}'s {field!r} has neither bytes nor a path")
    if isinstance(value, bytes):
        return _Record(index, key, value)
    if value is None or value == "":
        return _Record(index, key, None, f"row {index}'s {field!r} is empty (null)")
    if isinstance(value, str):
        path = _resolve(value, folder)
        if not _has_filesystem(path):
            return _Record(index, key, None, f"row {index}'s {field!r} is {path!r}, whose scheme no installed "
                           f"filesystem reads", "UnsupportedScheme")
        return _Record(index, key, None, path=path)
    shown = repr(value)[:60]
    return _Record(index, key, None, f"row {index}'s {field!r} is {type(value).__name__} {shown}, not image bytes "
                   f"or a path", "WrongImageType")


def _table_fields(schema: pa.Schema, fields: RecordFields, shard: str, kind: str) -> tuple[str, str | None]:
    names = schema.names
    image_field = _first_present(names, fields.image, IMAGE_FIELDS)
    if image_field is None:
        raise ShardFieldError(f"{kind} shard {shard} {_missing_image(fields, names)}")
    return image_field, _first_present(names, fields.key, KEY_FIELDS)


def _batch_records(batches: Iterable[pa.RecordBatch], image_field: str, key_field: str | None, shard: str,
                   shard_name: str, keys_only: bool) -> Iterator[_Record]:
    """Records of a table's batches, in order: the key column (else SHARD:INDEX) and the image cell."""
    folder = shard.rsplit("/", 1)[0] if "/" in shard else ""
    index = 0
    for batch in batches:
        images = [None] * batch.num_rows if keys_only else batch.column(image_field).to_pylist()
        keys = batch.column(key_field).to_pylist() if key_field else [None] * batch.num_rows
        for image, key in zip(images, keys):
            key = _text(key) if key not in (None, "", b"") else f"{shard_name}:{index}"
            yield _Record(index, key, None) if keys_only else _value_record(index, key, image, image_field, folder)
            index += 1


def _parquet_records(shard: str, fields: RecordFields, shard_name: str,
                     keys_only: bool = False) -> Iterator[_Record]:
    with files.open_read(shard) as handle:
        table = pq.ParquetFile(handle)
        image_field, key_field = _table_fields(table.schema_arrow, fields, shard, "Parquet")
        columns = [name for name in (None if keys_only else image_field, key_field) if name]
        if not columns:  # keys only, and they are positions: no column to read
            for index in range(table.metadata.num_rows):
                yield _Record(index, f"{shard_name}:{index}", None)
            return
        batches = table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
        yield from _batch_records(batches, image_field, key_field, shard, shard_name, keys_only)


def _arrow_records(shard: str, fields: RecordFields, shard_name: str,
                   keys_only: bool = False) -> Iterator[_Record]:
    # An IPC stream has no column index: every batch is read whole (the key scan too), one at a time.
    with files.open_read(shard) as handle:
        reader = _ipc_reader(handle)
        image_field, key_field = _table_fields(reader.schema, fields, shard, "Arrow")
        yield from _batch_records(reader, image_field, key_field, shard, shard_name, keys_only)


def _table_schema(layout: str, shard: str) -> pa.Schema:
    with files.open_read(shard) as handle:
        return pq.ParquetFile(handle).schema_arrow if layout == "parquet" else _ipc_reader(handle).schema


# --------------------------------------------------------------------------- both

_READERS: dict[str, Callable[..., Iterator[_Record]]] = {
    "tfrecord": _tfrecord_records, "parquet": _parquet_records, "arrow": _arrow_records}


def scan_record_keys(layout: str, shard: str, fields: RecordFields, shard_name: str) -> list[str]:
    """Every record's key, in record order (Parquet reads the key column only). A shard that
    breaks gives the keys before the break: reading stops at the same place."""
    keys: list[str] = []
    reader = _READERS[layout]
    records = (reader(shard, fields, shard_name) if layout == "tfrecord"
               else reader(shard, fields, shard_name, keys_only=True))
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
    """A shard's records as ImageRecords (uri `SHARD#INDEX`, or the image's path where a record gives
    a path) or read ErrorRecords.

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
            elif record.path is not None:
                # read like a listed file (http with retries): a missing file is an error row
                yield read_member(record.key, record.path)
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
        # (by the shard itself when nothing of it could be read: missing, not a TFRecord / Parquet / Arrow file).
        if position:
            yield error_from_exception(f"{shard_name}:{position}", record_uri(shard, position), "read", exc)
        else:
            yield error_from_exception(shard_name, shard, "read", exc)


def read_record_image(layout: str, shard: str, index: int, fields: RecordFields = RecordFields()) -> bytes:
    """The image bytes of record `index` of a shard (a row's uri `SHARD#INDEX`)."""
    for record in _READERS[layout](shard, fields, ""):
        if record.index == index:
            if record.path is not None:  # read as the run read it: a file or URL
                return read_bytes(record.path)
            if record.image is None:
                raise FileNotFoundError(record.problem)
            return record.image
    raise FileNotFoundError(f"{shard} has no record {index}")


def shard_fields(layout: str, shard: str) -> list[str]:
    """The field names of a shard's first record (TFRecord) or its columns (Parquet, Arrow): for the
    launcher's check that the image field exists."""
    if layout != "tfrecord":
        return list(_table_schema(layout, shard).names)
    with files.open_read(shard, decompress=True) as handle:
        for data in iter_records(handle):
            return list(parse_example(data))
    return []


def check_record_fields(layout: str, shard: str, fields: RecordFields) -> None:
    """The launcher's check of a shard (the first of the input), before any work: it must have the
    image field and a --key-field that was asked for, and a table's image column must hold bytes,
    paths or the image struct. Raises ConfigError; a shard that cannot be read is left to the run,
    which reports it as an error row."""
    try:
        schema = _table_schema(layout, shard) if layout != "tfrecord" else None
        names = schema.names if schema is not None else shard_fields(layout, shard)
    except RECORD_READ_ERRORS:  # broken or unreachable now: the run reports it (an error row) or retries it
        return
    for name, value in (("image_field", fields.image), ("key_field", fields.key)):
        if value is not None and value not in names:
            raise ConfigError(f"{name} {value!r} is not a field of {shard}; its fields: {', '.join(names)}")
    image_field = _first_present(names, fields.image, IMAGE_FIELDS)
    if image_field is None:
        raise ConfigError(f"{shard} has none of the default image fields {', '.join(IMAGE_FIELDS)}; its fields: "
                          f"{', '.join(names)}; name the image's field with --image-field")
    kind = schema.field(image_field).type if schema is not None else None
    if kind is not None and not is_image_type(kind):
        raise ConfigError(f"column {image_field!r} of {shard} is {kind}, not image bytes (binary), a path (string) "
                          f"or an image struct<bytes: binary, path: string>; name the image's column with "
                          f"--image-field")
