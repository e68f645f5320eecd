"""Reading paths on a local disk or on any Beam filesystem, with Beam imported only for URIs
(and for decompressing a file while it is read).

Apache Beam's import costs seconds; a reader of a local store (`featurize search`, `FeatureStore`,
`featurize serve`) should not pay it. A path with a scheme (`gs://`, `s3://`, ...) goes through
`apache_beam.io.filesystems.FileSystems`; anything else is a local path, read with the standard
library exactly as Beam's LocalFileSystem would.

Many small reads (a store's journal entries, its shards' footers) go through `in_parallel`: an
object store answers each in tens of milliseconds, so 10^5 of them one by one take an hour.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence, TypeVar

from pipeline import object_stores

try:
    import fcntl  # scratch folders' owner locks (POSIX)
except ImportError:  # elsewhere: no lock, and nothing is swept
    fcntl = None

# Beam's FileSystems.URI_SCHEMA_PATTERN: a scheme, then "://".
_SCHEME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")
_WILDCARD = re.compile(r"[*?\[]")
# Small reads in flight at once: object stores serve them concurrently; the threads wait on the
# network, not on the GIL.
READ_THREADS = 32
T = TypeVar("T")


def is_local(path: str) -> bool:
    """Whether `path` has no URI scheme (and so is a local path)."""
    return _SCHEME.match(path.strip()) is None


def _beam():
    from apache_beam.io.filesystems import FileSystems

    if FileSystems._pipeline_options is None:  # pylint: disable=protected-access
        # Not a run's launcher nor a worker (both set them): a store command. Without options Beam cannot build
        # its S3 filesystem at all; empty ones let boto3 read the standard AWS variables.
        object_stores.use_options()
    return FileSystems


def join(path: str, *parts: str) -> str:
    return os.path.join(path, *parts) if is_local(path) else _beam().join(path, *parts)


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _beam().exists(path)


def open_read(path: str, decompress: bool = False) -> BinaryIO:
    """A binary file object: the bytes as stored, or with `decompress` decompressed while streaming
    by the suffix, as Beam decides (`.gz`, `.bz2`, `.zst`, ...; any other name is read as stored)."""
    from_beam = not is_local(path) or decompress  # Beam's compressed reader, not a second one here
    if not from_beam:
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes

    kind = CompressionTypes.AUTO if decompress else CompressionTypes.UNCOMPRESSED
    return _beam().open(path, compression_type=kind)


def _local_matches(pattern: str) -> list[str]:
    """Paths matching `pattern` one folder level at a time; unlike glob, `*` matches names that
    start with a dot, as in Beam."""
    if not _WILDCARD.search(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    head, tail = os.path.split(pattern)
    found = []
    for parent in _local_matches(head) if _WILDCARD.search(head) else [head]:
        try:
            names = os.listdir(parent or ".")
        except (FileNotFoundError, NotADirectoryError):
            continue
        found += [os.path.join(parent, name) for name in fnmatch.filter(names, tail)]
    return found


def list_paths(pattern: str) -> list[str]:
    """Every file matching `pattern`, sorted, as Beam's FileSystems.match lists it."""
    if is_local(pattern) and not _WILDCARD.search(pattern):  # Beam: the path itself, even a folder
        return [pattern] if os.path.exists(pattern) else []
    if is_local(pattern) and "**" not in pattern:  # Beam's `**` crosses folders, even inside a name: left to Beam
        return sorted(path for path in _local_matches(pattern) if os.path.isfile(path))
    return sorted(m.path for m in _beam().match([pattern])[0].metadata_list)


def open_write(path: str) -> BinaryIO:
    """A binary file object that writes `path` on any filesystem, as stored (a local one with the standard
    library, its folder made)."""
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")
    from apache_beam.io.filesystem import CompressionTypes

    return _beam().create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def upload(local_path: str, destination: str) -> None:
    """Copy a local file to `destination` on any filesystem (a local one with the standard library)."""
    if is_local(destination):
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        shutil.copyfile(local_path, destination)
        return
    with open(local_path, "rb") as source, open_write(destination) as target:
        shutil.copyfileobj(source, target, 1 << 22)


def read_json(path: str) -> dict[str, Any]:
    with open_read(path) as handle:
        return json.load(handle)


def read_iter(read: Callable[[str], T], paths: Iterable[str], threads: int = READ_THREADS) -> Iterator[T]:
    """`read(path)` for each of `paths`, yielded in the order of `paths` whatever order the reads
    finish in, with up to `threads` reads in flight and at most `2 * threads` results waiting: a
    consumer that keeps only a summary of each holds O(threads) of them. The first failing read's
    exception is raised (the reads not yet started are not begun). `threads=1` reads one by one."""
    if threads <= 1:
        yield from (read(path) for path in paths)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featurize-read") as pool:
        waiting: deque = deque()
        try:
            for path in paths:
                waiting.append(pool.submit(read, path))
                if len(waiting) >= 2 * threads:
                    yield waiting.popleft().result()
            while waiting:
                yield waiting.popleft().result()
        finally:
            for future in waiting:
                future.cancel()


def in_parallel(call: Callable[[str], T], paths: Sequence[str], threads: int = READ_THREADS) -> list[T]:
    """`[call(path) for path in paths]` (reads, or uploads), with up to `threads` calls in flight, results in
    the order of `paths` (see `read_iter`)."""
    return list(read_iter(call, paths, min(threads, len(paths))))


def read_json_iter(paths: Iterable[str], threads: int = READ_THREADS) -> Iterator[dict[str, Any]]:
    """Every file of `paths` as JSON, in the order of `paths` (see `read_iter`)."""
    return read_iter(read_json, paths, threads)


_SCRATCH: list[weakref.finalize] = []
SCRATCH_PREFIX = "featurize-"
# Inside each scratch folder, locked (flock) by the process that made it for as long as it lives: the
# kernel lets go when it dies, however it died, so a lock anyone can take marks an abandoned folder.
_OWNER_LOCK = ".owner.lock"
_swept = False


def scratch_folder(owner: object, what: str) -> str:
    """A local temporary folder (`featurize-WHAT-...`) that goes when `owner` is collected, at exit, or at
    `remove_scratch()` (an exit through os._exit, after a Ctrl-C, runs no finalizer: a 10^8-file listing's
    spill is GBs).

    A process killed outright (kill -9, out of memory) removes nothing: the first scratch folder a
    process makes first removes the ones such processes left (`remove_abandoned_scratch`)."""
    global _swept
    if not _swept:
        _swept = True
        remove_abandoned_scratch()
    folder = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{what}-")
    _SCRATCH.append(weakref.finalize(owner, _remove, folder, _hold(folder)))
    return folder


def _hold(folder: str) -> BinaryIO | None:
    """The folder's owner lock, locked by this process (None where there is no flock: nothing is swept)."""
    if fcntl is None:
        return None
    # Locked under another name, then renamed into place: a sweeper never sees an unlocked owner lock.
    fd, path = tempfile.mkstemp(dir=folder, prefix=".locking-")
    handle = os.fdopen(fd, "wb")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(path, os.path.join(folder, _OWNER_LOCK))
    return handle


def _remove(folder: str, lock: BinaryIO | None) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if lock is not None:
        lock.close()


def remove_abandoned_scratch(parent: str | None = None) -> list[str]:
    """Delete the scratch folders in `parent` (the temporary folder) whose process is gone; returns them.
    A folder whose owner lock a live process holds stays, whatever PID namespace (container) it runs in."""
    if fcntl is None:
        return []
    removed = []
    with os.scandir(parent or tempfile.gettempdir()) as entries:
        for entry in entries:
            if not entry.name.startswith(SCRATCH_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                handle = open(os.path.join(entry.path, _OWNER_LOCK), "rb")
            except OSError:  # no owner lock: not a scratch folder, or one made before locks
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held: its process is alive
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    if removed:
        logging.getLogger(__name__).info("removed %d scratch folders left by killed processes: %s",
                                         len(removed), ", ".join(removed))
    return removed


def remove_scratch() -> None:
    """Delete every scratch folder still there (a finalizer runs once, whichever comes first)."""
    for cleanup in _SCRATCH:
        cleanup()
    _SCRATCH.clear()

