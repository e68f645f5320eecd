"""The element types that flow between stages, and the error-row contract."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

# Stages an input can fail in; every failed input becomes exactly one ErrorRecord.
STAGES = ("read", "decode", "infer", "write")
# Beam metrics (counters, distributions) of every stage live under this namespace.
METRICS_NAMESPACE = "featurize"


class ImageRecord(NamedTuple):
    """Encoded bytes of one input image, before decoding."""
    key: str
    uri: str
    data: bytes


class ImageMeta(NamedTuple):
    """What travels beside the pixels and ends in the feature row."""
    key: str
    uri: str
    width: int
    height: int


class ErrorRecord(NamedTuple):
    """One failed input: where it came from, the stage that failed and why."""
    key: str
    uri: str
    stage: str
    error_type: str
    message: str


class ScanMismatch(RuntimeError):
    """Reading a shard found inputs its key scan did not see: duplicate keys could slip through."""


_IN_MEMORY_FILE = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


def error_from_exception(key: str, uri: str, stage: str, exc: BaseException) -> ErrorRecord:
    """An error row for `exc`; messages are capped so one pathological input cannot bloat the store."""
    # Pillow names its in-memory buffer, which tells a reader nothing: the row has the key and uri.
    message = " ".join(_IN_MEMORY_FILE.sub("", str(exc) or repr(exc)).split())
    return ErrorRecord(key, uri, stage, type(exc).__name__, message[:2000])


@dataclass(frozen=True)
class RecordFields:
    """Which field of a TFRecord Example or Parquet / Arrow row holds the image and which the key
    (None: the default rules of `pipeline.inputs.record_shards`)."""
    image: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class WorkUnit:
    """A deterministic piece of the input that is committed to the store whole or not at all.

    A shard (tar, TFRecord, Parquet, Arrow) is one unit (`source` is the shard, `name` its path below
    the key root, which default record keys start with); plain files are grouped into units of
    sorted keys (`members`: (key, uri) pairs). `rejected` are inputs of the unit refused while
    planning (a key that another file already has): they become its error rows.
    """
    unit_id: str
    layout: str  # one of pipeline.inputs.layouts.UNIT_LAYOUTS
    source: str
    members: tuple[tuple[str, str], ...] = ()
    rejected: tuple[ErrorRecord, ...] = ()
    size_bytes: int = 0
    name: str = ""
    fields: RecordFields = RecordFields()


def relative_path(path: str, root: str) -> str:
    """`path` below `root` with POSIX separators, or its base name when it is not below it."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if root and path.startswith(prefix) else path.rsplit("/", 1)[-1]
