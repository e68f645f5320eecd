"""A Beam filesystem `flaky://PATH` over the local disk whose first opens or reads fail transiently.

Registered by being imported (Beam finds FileSystem subclasses by their scheme). Faults are
armed per process with `arm(...)`, so it is meant for the in-process runner.
"""
from __future__ import annotations

import io

from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "flaky://"
_faults = {"open": 0, "read_after": None, "reads": 0, "opened": 0}


def arm(failing_opens: int = 0, fail_read_after: int | None = None, failing_reads: int = 0) -> None:
    """The next `failing_opens` opens raise ConnectionResetError; then the next `failing_reads`
    opened files raise TimeoutError once `fail_read_after` bytes were read from them."""
    _faults.update(open=failing_opens, read_after=fail_read_after, reads=failing_reads, opened=0)


def opened() -> int:
    return _faults["opened"]


class _BreaksMidway(io.RawIOBase):
    def __init__(self, handle, limit: int):
        self._handle, self._left = handle, limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._handle.seekable()

    def seek(self, offset, whence=0):
        return self._handle.seek(offset, whence)

    def tell(self):
        return self._handle.tell()

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            raise TimeoutError("read timed out (injected)")
        data = self._handle.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        self._handle.close()
        super().close()


def _local(path: str) -> str:
    return path[len(PREFIX):] if path.startswith(PREFIX) else path


class FlakyFileSystem(LocalFileSystem):
    @classmethod
    def scheme(cls):
        return "flaky"

    def match(self, patterns, limits=None):
        results = FileSystems.match([_local(p) for p in patterns], limits)  # the local filesystem's own
        return [MatchResult(PREFIX + r.pattern, [FileMetadata(PREFIX + m.path, m.size_in_bytes,
                                                              m.last_updated_in_seconds)
                                                 for m in r.metadata_list]) for r in results]

    def exists(self, path):
        return super().exists(_local(path))

    def join(self, base, *paths):
        return PREFIX + super().join(_local(base), *paths)

    def open(self, path, *args, **kwargs):
        _faults["opened"] += 1
        if _faults["open"] > 0:
            _faults["open"] -= 1
            raise ConnectionResetError(104, "Connection reset by peer (injected)")
        handle = super().open(_local(path), *args, **kwargs)
        if _faults["read_after"] is not None and _faults["reads"] > 0:
            _faults["reads"] -= 1
            return io.BufferedReader(_BreaksMidway(handle, _faults["read_after"]))
        return handle
