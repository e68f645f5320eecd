"""Weights files on shared storage: each worker copies a file once into a local cache keyed by sha256.

`--weights` may be any URI Beam's FileSystems can open (`gs://`, `s3://`, `hdfs://`, local).
The launcher hashes it (or takes `--weights-sha256`); every worker then looks the hash up in
its cache and, on a miss, copies the file, verifies the hash and publishes it with an atomic
rename, so several processes on one machine never see a half-written file.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

CACHE_ENV = "FEATURIZE_CACHE"


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "featurize", "weights")


def sha256_of(uri: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsMismatch(ValueError):
    """The weights file is not the one the run was configured with."""


def stage_weights(uri: str, sha256: str) -> str:
    """A local path to `uri`'s bytes, verified against `sha256`, copied at most once per cache."""
    directory = os.path.join(cache_dir(), sha256)
    # Keep the name: Keras picks the loader by extension (.h5 vs .weights.h5).
    local = os.path.join(directory, posixpath.basename(uri.rstrip("/")) or "weights.h5")
    if os.path.exists(local):
        return local
    os.makedirs(directory, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".partial-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as target, FileSystems.open(
                uri, compression_type=CompressionTypes.UNCOMPRESSED) as source:
            for chunk in iter(lambda: source.read(1 << 22), b""):
                digest.update(chunk)
                target.write(chunk)
        if digest.hexdigest() != sha256:
            raise WeightsMismatch(f"weights {uri!r} have sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(partial, local)  # atomic: a concurrent reader sees the whole file or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return local
