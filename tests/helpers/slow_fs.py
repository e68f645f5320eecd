"""A Beam filesystem `slow://PATH` over the local disk that waits a fixed latency on every call
that would be a request to an object store (match, open, create, exists, rename, delete, ...),
and counts the calls and how many were in flight at once.

Registered by being imported (Beam finds FileSystem subclasses by their scheme). Beam builds a
new FileSystem object per call, so the latency and the counters are per process (`configure`,
`stats`): meant for code run in this process (tests, `bench/journal_latency.py`).
Paths look like `slow:///tmp/store/_featurize/units/x.json` (the scheme, then an absolute local path).
Joining and splitting paths are string operations, as on an object store: they cost nothing.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from apache_beam.io.filesystem import CompressionTypes, FileMetadata, FileSystem, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "slow://"
DEFAULT_LATENCY_S = 0.020

_lock = threading.Lock()
_state = {"latency_s": DEFAULT_LATENCY_S, "calls": 0, "in_flight": 0, "peak_in_flight": 0}


def configure(latency_s: float = DEFAULT_LATENCY_S) -> None:
    """Set the latency of every call from now on and zero the counters."""
    with _lock:
        _state.update(latency_s=latency_s, calls=0, in_flight=0, peak_in_flight=0)


@contextmanager
def latency(latency_s: float) -> Iterator[None]:
    """`configure(latency_s)` for the block, the default latency (and zeroed counters) after it."""
    configure(latency_s)
    try:
        yield
    finally:
        configure()


def stats() -> dict[str, float]:
    """{"latency_s", "calls", "in_flight", "peak_in_flight"}: calls since `configure`, and the most
    that were waiting at the same moment (1 when everything ran one call after another)."""
    with _lock:
        return dict(_state)


def slow_path(local_path: str) -> str:
    return PREFIX + local_path


def _local(path: str) -> str:
    return path[len(PREFIX):] if path.startswith(PREFIX) else path


@contextmanager
def _request() -> Iterator[None]:
    """One round trip: counted while it waits, so overlapping waits show as in-flight > 1."""
    with _lock:
        _state["calls"] += 1
        _state["in_flight"] += 1
        _state["peak_in_flight"] = max(_state["peak_in_flight"], _state["in_flight"])
        latency = _state["latency_s"]
    try:
        time.sleep(latency)
        yield
    finally:
        with _lock:
            _state["in_flight"] -= 1


def _slow_metadata(metadata: FileMetadata) -> FileMetadata:
    return FileMetadata(PREFIX + metadata.path, metadata.size_in_bytes, metadata.last_updated_in_seconds)


class SlowFileSystem(FileSystem):
    """Every request delegates to Beam's LocalFileSystem after one wait of the configured latency."""

    def __init__(self, pipeline_options: Any):
        super().__init__(pipeline_options)
        self._disk = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls) -> str:
        return "slow"

    def join(self, basepath: str, *paths: str) -> str:
        return PREFIX + self._disk.join(_local(basepath), *paths)

    def split(self, path: str) -> tuple[str, str]:
        head, tail = self._disk.split(_local(path))
        return PREFIX + head, tail

    def has_dirs(self) -> bool:
        return True

    def mkdirs(self, path: str) -> None:
        with _request():
            self._disk.mkdirs(_local(path))

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        with _request():
            found = list(self._disk._list(_local(dir_or_prefix)))  # noqa: SLF001 - the wrapped filesystem's own
        return iter([_slow_metadata(metadata) for metadata in found])

    def match(self, patterns: list[str], limits: list[int] | None = None) -> list[MatchResult]:
        # One listing request per pattern, as an object store's prefix listing (one page).
        results = []
        for pattern, limit in zip(patterns, limits or [None] * len(patterns)):
            with _request():
                result = self._disk.match([_local(pattern)], [limit])[0]
            results.append(MatchResult(pattern, [_slow_metadata(m) for m in result.metadata_list]))
        return results

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO) -> Any:
        with _request():
            return self._disk.create(_local(path), mime_type, compression_type)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO) -> Any:
        with _request():
            return self._disk.open(_local(path), mime_type, compression_type)

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        with _request():
            self._disk.copy([_local(p) for p in source_file_names], [_local(p) for p in destination_file_names])

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        with _request():
            self._disk.rename([_local(p) for p in source_file_names], [_local(p) for p in destination_file_names])

    def exists(self, path: str) -> bool:
        with _request():
            return self._disk.exists(_local(path))

    def size(self, path: str) -> int:
        with _request():
            return self._disk.size(_local(path))

    def last_updated(self, path: str) -> float:
        with _request():
            return self._disk.last_updated(_local(path))

    def checksum(self, path: str) -> str:
        with _request():
            return self._disk.checksum(_local(path))

    def metadata(self, path: str) -> FileMetadata:
        with _request():
            return _slow_metadata(self._disk.metadata(_local(path)))

    def delete(self, paths: list[str]) -> None:
        with _request():
            self._disk.delete([_local(p) for p in paths])

    def report_lineage(self, path: str, unused_lineage: Any) -> None:
        return None
