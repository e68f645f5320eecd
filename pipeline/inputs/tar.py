"""WebDataset tar shards: sample keys, the key scan, and streaming a shard's image members.

A tar member is keyed by its WebDataset sample key (the member path up to the first dot of its
base name), with one image member per sample; its row's uri is `shard.tar#member`. Shards are
streamed, never extracted; compressed ones (`.tar.gz`, `.tgz`, or a gzip stream named `.tar`)
are decompressed on the fly.
"""
from __future__ import annotations

import lzma
import posixpath
import tarfile
import zlib
from typing import Iterator, Mapping

from pipeline import files
from pipeline.elements import ErrorRecord, ImageRecord, ScanMismatch, error_from_exception
from pipeline.images import is_image_name
from pipeline.inputs.retries import is_transient

# What a broken, truncated or missing shard raises while it is streamed. A transient OSError
# among them (is_transient) is not data: it is retried, then fails the bundle. Anything else
# (a bug, MemoryError) fails the bundle too, so Beam retries it.
TAR_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def webdataset_key(member_name: str) -> str:
    """`dir/a.b.jpg` -> `dir/a`: WebDataset cuts the sample key at the first dot of the base name."""
    name = member_name[2:] if member_name.startswith("./") else member_name
    directory, base = posixpath.split(name)
    stem = base.split(".", 1)[0]
    return posixpath.join(directory, stem) if directory else stem


def member_uri(shard: str, member_name: str) -> str:
    return f"{shard}#{member_name}"


def _image_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for info in archive:
        if info.isfile() and is_image_name(info.name):
            yield info


def read_tar_member(shard: str, member: str) -> bytes:
    """The bytes of one member of a shard (a row's uri `shard.tar#member`), found by streaming it."""
    with files.open_read(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
        for info in archive:
            if info.name == member:
                return archive.extractfile(info).read()
    raise FileNotFoundError(f"{member!r} is not in {shard}")


def scan_tar_keys(shard: str) -> list[str]:
    """Sample keys of a shard's image members, in member order, reading headers only where it can.

    A shard that breaks (truncated, corrupt, missing) gives the keys before the break: the
    reading pass stops at the same place and reports the rest as an error row.
    """
    keys: list[str] = []
    try:
        with files.open_read(shard) as handle:
            # Plain tars are scanned by seeking over member data; compressed ones must stream.
            mode = "r:*"  # transparent compression, whatever the name says (the reader streams with r|*)
            with tarfile.open(fileobj=handle, mode=mode) as archive:
                for info in _image_members(archive):
                    keys.append(webdataset_key(info.name))
    except TAR_READ_ERRORS as exc:
        if is_transient(exc):
            raise
    return keys


def read_tar_records(shard: str, losers: Mapping[int, str] | None = None,
                     scanned: int | None = None) -> Iterator[ImageRecord | ErrorRecord]:
    """A shard's image members as ImageRecords, streamed (never extracted).

    `losers` maps the position of an image member (0, 1, ... in shard order) whose sample key
    belongs to another member to a description of that member: it becomes a DuplicateKey
    error row. `scanned` is how many image members the key scan saw: reading more raises
    ScanMismatch. A shard that breaks keeps every complete member before the break and makes
    one error row for the rest (keyed by the member it broke in, else by the shard); a
    transient failure raises (the unit is retried).
    """
    losers = losers or {}
    current: tuple[str, str] | None = None
    try:
        with files.open_read(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
            for position, info in enumerate(_image_members(archive)):
                key, uri = webdataset_key(info.name), member_uri(shard, info.name)
                if scanned is not None and position >= scanned:
                    raise ScanMismatch(f"{shard}: the key scan saw {scanned} image members, reading finds more; "
                                       f"the shard changed or the scan failed, so duplicate keys were not checked")
                if position in losers:
                    yield ErrorRecord(key, uri, "read", "DuplicateKey",
                                      f"sample key {key!r} also comes from {losers[position]}; kept that one")
                    continue
                current = (key, uri)
                data = archive.extractfile(info).read()
                current = None
                yield ImageRecord(key, uri, data)
    except TAR_READ_ERRORS as exc:
        if is_transient(exc):
            raise
        yield error_from_exception(*(current or (posixpath.basename(shard), shard)), "read", exc)
