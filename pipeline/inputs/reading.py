"""Reading: the records of one work unit, its keys for the duplicate check, and the bytes behind a row's uri.

Each layout has its reader (`pipeline.inputs.fetch` for listed files, `pipeline.inputs.tar`,
`pipeline.inputs.record_shards`); this module picks it by the unit's layout. The readers are
plain generators: the unit stage (`pipeline.job.stages`) and the `ReadImages` transform both
drive them.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from pipeline.elements import ErrorRecord, ImageRecord, RecordFields, WorkUnit
from pipeline.inputs import record_shards
from pipeline.inputs.fetch import read_bytes, read_member
from pipeline.inputs.layouts import split_shard_uri
from pipeline.inputs.tar import TAR_READ_ERRORS, read_tar_member, read_tar_records, scan_tar_keys

URI_READ_ERRORS = (*TAR_READ_ERRORS, *record_shards.RECORD_READ_ERRORS)  # what read_uri raises for a bad uri


def read_uri(uri: str, fields: RecordFields = RecordFields()) -> bytes:
    """The bytes behind a row's uri: a file, `shard.tar#member` (found by scanning the shard), or
    `shard.tfrecord#INDEX` / `shard.parquet#INDEX` / `shard.arrow#INDEX` (the image of that record)."""
    inside = split_shard_uri(uri)
    if inside is None:
        return read_bytes(uri)
    layout, shard, member = inside
    if layout == "tar":
        return read_tar_member(shard, member)
    if not member.isdigit():
        raise FileNotFoundError(f"{uri!r} does not name a record: {shard}#INDEX expected")
    return record_shards.read_record_image(layout, shard, int(member), fields)


def read_file_records(members: Iterable[tuple[str, str]]) -> Iterator[ImageRecord | ErrorRecord]:
    """(key, uri) -> the file's bytes as an ImageRecord, or a read ErrorRecord when it cannot be read
    (missing, permissions, a directory, an http 404); a transient failure of a filesystem raises
    (the unit is retried)."""
    for key, uri in members:
        yield read_member(key, uri)


def scan_unit_keys(unit: WorkUnit) -> list[str]:
    """The keys of a shard unit's inputs, in reading order (for duplicate keys across shards)."""
    if unit.layout == "tar":
        return scan_tar_keys(unit.source)
    return record_shards.scan_record_keys(unit.layout, unit.source, unit.fields, unit.name)


def unit_records(unit: WorkUnit, losers: Mapping[int, str] | None = None,
                 scanned: int | None = None) -> Iterator[ImageRecord | ErrorRecord]:
    """Every input of a WorkUnit, in a fixed order: its planning rejects, then its records."""
    yield from unit.rejected
    if unit.layout == "files":
        yield from read_file_records(unit.members)
    elif unit.layout == "tar":
        yield from read_tar_records(unit.source, losers, scanned)
    else:
        yield from record_shards.read_record_shard(unit.layout, unit.source, unit.fields, unit.name, losers, scanned)
