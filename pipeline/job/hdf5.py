"""HDF5 feature stores: one shard file per writer, one virtual `features.h5` over all of them.

HDF5 files cannot be shared by concurrent writers, so every work unit writes its own shard
`features/UNIT.h5` (committed like a Parquet unit, see pipeline.job.journal). Shards are written
to a local temporary file (HDF5 needs to seek) and copied to their destination on close, so
any Beam filesystem works. After the last unit,
`features.h5` maps every shard into single logical datasets with HDF5 virtual datasets
(relative paths: the store can be moved as a folder), so
`h5py.File("out/features.h5")["embedding"]` is the whole N x D matrix without a copy.

Datasets (in shards and in features.h5): one per model output, named as the Parquet
column (`embedding`, or `LAYER/POOLING`, which HDF5 shows as a group per layer), N x D,
chunked along rows and gzip-compressed; `key`, `uri` (UTF-8 strings), `width`, `height`
(int32); with --predictions K also `predicted_ids` (N x K int32), `predicted_names` (N x K
UTF-8 strings) and `predicted_scores` (N x K float32). The model fingerprint is the JSON
attribute `featurize.fingerprint`.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import h5py
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.files import in_parallel, upload
from pipeline.model import predictions
from pipeline.job.journal import rename_over
from pipeline.store.schema import FINGERPRINT_ATTR, VIRTUAL_STORE
from pipeline.elements import relative_path

_STRING = h5py.string_dtype("utf-8")
_META = {"key": _STRING, "uri": _STRING, "width": np.int32, "height": np.int32}
_CHUNK_ROWS = 1024


def _matrices(outputs: dict[str, int], dtype: str, fingerprint: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """{dataset: (columns, dtype)} of the N x D datasets: the outputs, and the top-K columns."""
    matrices: dict[str, tuple[int, Any]] = {name: (dim, dtype) for name, dim in outputs.items()}
    top = fingerprint.get("predictions") or 0
    if top:
        matrices.update({predictions.IDS: (top, np.int32), predictions.NAMES: (top, _STRING),
                         predictions.SCORES: (top, np.float32)})
    return matrices


class ShardWriter:
    """Appends rows to one HDF5 shard in a local temporary file, in row blocks; `close` copies it
    to `destination`, `abort` drops it."""

    def __init__(self, destination: str, outputs: dict[str, int], dtype: str, fingerprint: dict[str, Any]):
        self.destination = destination
        handle, self.local_path = tempfile.mkstemp(suffix=".h5", prefix="featurize-shard-")
        os.close(handle)
        self.file = h5py.File(self.local_path, "w")
        self.file.attrs[FINGERPRINT_ATTR] = json.dumps(fingerprint, sort_keys=True)
        self.matrices = _matrices(outputs, dtype, fingerprint)
        self.buffers: dict[str, list] = {name: [] for name in [*_META, *self.matrices]}
        for name, (dim, kind) in self.matrices.items():
            self.file.create_dataset(name, shape=(0, dim), maxshape=(None, dim), dtype=kind,
                                     chunks=(_CHUNK_ROWS, dim), compression="gzip", compression_opts=1,
                                     shuffle=True)
        for name, kind in _META.items():
            self.file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=kind,
                                     chunks=(_CHUNK_ROWS * 4,), compression="gzip", compression_opts=1)

    def append(self, row: dict[str, Any]) -> None:
        for name, values in self.buffers.items():
            values.append(row[name])
        if len(self.buffers["key"]) >= _CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        count = len(self.buffers["key"])
        if not count:
            return
        for name, values in self.buffers.items():
            dataset = self.file[name]
            start = dataset.shape[0]
            dataset.resize(start + count, axis=0)
            dataset[start:] = (np.array(values, dtype=object if name == predictions.NAMES else None)
                               if name in self.matrices else np.asarray(values, dtype=dataset.dtype))
            values.clear()

    def close(self) -> None:
        try:
            self.flush()
            self.file.close()
            upload(self.local_path, self.destination)
        finally:
            self.abort()

    def abort(self) -> None:
        self.file.close()  # a no-op when already closed
        if os.path.exists(self.local_path):
            os.unlink(self.local_path)


def shard_rows(path: str) -> int:
    with FileSystems.open(path) as handle, h5py.File(handle, "r") as shard:
        return int(shard["key"].shape[0])


def write_virtual_store(output: str, shard_paths: list[str], outputs: dict[str, int], dtype: str,
                        fingerprint: dict[str, Any]) -> int:
    """Write `features.h5` mapping every shard, in order, into one dataset per name; returns rows.
    Shards are opened 32 at a time (h5py reads one at a time, but an object store's opens overlap)."""
    counts = in_parallel(shard_rows, shard_paths)
    total = sum(counts)
    relative = [relative_path(path, output) for path in shard_paths]
    layouts = {name: h5py.VirtualLayout(shape=(total, dim), dtype=kind)
               for name, (dim, kind) in _matrices(outputs, dtype, fingerprint).items()}
    layouts.update({name: h5py.VirtualLayout(shape=(total,), dtype=kind) for name, kind in _META.items()})
    offset = 0
    for path, count in zip(relative, counts):
        if not count:  # an empty shard maps nothing (and HDF5 refuses empty selections)
            continue
        for name, layout in layouts.items():
            shape = (count, *layout.shape[1:])
            layout[offset:offset + count] = h5py.VirtualSource(path, name, shape=shape)
        offset += count
    handle, local_path = tempfile.mkstemp(suffix=".h5", prefix="featurize-vds-")
    os.close(handle)
    try:
        with h5py.File(local_path, "w") as store:
            store.attrs[FINGERPRINT_ATTR] = json.dumps(fingerprint, sort_keys=True)
            for name, layout in layouts.items():
                if total:
                    store.create_virtual_dataset(name, layout)
                else:  # nothing to map: an empty dataset with the same shape and type
                    store.create_dataset(name, shape=layout.shape, dtype=layout.dtype)
        # A copy is not atomic: copy beside it, then rename over the old one.
        final = FileSystems.join(output, VIRTUAL_STORE)
        upload(local_path, final + ".tmp")
        rename_over(final + ".tmp", final)
    finally:
        os.unlink(local_path)
    return total
