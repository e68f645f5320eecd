"""Weights files on shared storage: each worker copies a file once into a local cache keyed by sha256.

`--weights` may be any URI Beam's FileSystems can open (`gs://`, `s3://`, `hdfs://`) or a local
path (read without Beam: `pipeline.files.open_read`).
The launcher hashes it (or takes `--weights-sha256`); every worker then looks the hash up in
its machine's cache and, on a miss, copies the file under a machine-wide lock, verifies the
hash and publishes it with an atomic rename, so the processes of one machine copy it once and
never see a half-written file. A file already in the cache is hashed again (under the same lock)
the first time a process uses it, so a truncated or tampered cache is replaced, never used.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import tempfile
from typing import Iterator

from pipeline import files

CACHE_ENV = "FEATURIZE_CACHE"

# Cached files this process has hashed (or copied and hashed): checked once per process, not per call.
_verified: set[str] = set()


def cache_dir() -> str:
    """featurize's cache on this machine ($FEATURIZE_CACHE, else ~/.cache/featurize/weights)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "featurize", "weights")


def _chunks(handle) -> Iterator[bytes]:
    return iter(lambda: handle.read(1 << 22), b"")


def sha256_of(uri: str) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with files.open_read(uri) as handle:
        for chunk in _chunks(handle):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsMismatch(ValueError):
    """The weights file is not the one the run was configured with."""


@contextlib.contextmanager
def machine_lock(path: str) -> Iterator[None]:
    """An exclusive lock between the processes of one machine (e.g. Beam workers on a VM)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_weights(uri: str, sha256: str) -> str:
    """A local path to `uri`'s bytes, copied once per machine's cache and verified once per process.

    The copy is hashed as it is written and published with an atomic rename; a lock makes
    the other processes of the machine wait for that copy instead of making their own. A file
    found in the cache is hashed under the same lock before this process first returns it, and
    copied again from `uri` when its hash is wrong.
    """
    directory = os.path.join(cache_dir(), sha256)
    # Keep the name: Keras picks the loader by extension (.h5 vs .weights.h5).
    local = os.path.join(directory, posixpath.basename(uri.rstrip("/")) or "weights.h5")
    if local in _verified and os.path.exists(local):  # the stat catches a cache cleaned since
        return local
    with machine_lock(os.path.join(cache_dir(), f".{sha256}.lock")):
        if os.path.exists(local):
            if sha256_of(local) == sha256:
                _verified.add(local)
                return local
            os.unlink(local)  # truncated or tampered: never use it, copy the source again
        _copy_verified(uri, sha256, directory, local)
        _verified.add(local)
    return local


def _copy_verified(uri: str, sha256: str, directory: str, local: str) -> None:
    """Copy `uri` to `local` through a partial file, publishing it only if its hash is `sha256`."""
    os.makedirs(directory, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as target, files.open_read(uri) as source:
            for chunk in _chunks(source):
                digest.update(chunk)
                target.write(chunk)
        if digest.hexdigest() != sha256:
            raise WeightsMismatch(f"weights {uri!r} have sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(partial, local)  # atomic: a reader sees the whole file or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
