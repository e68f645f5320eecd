"""One reader per store format behind one small interface, so `FeatureStore` never branches on it.

A reader knows where a format keeps its rows; it returns a metadata column as a list, an
output's vectors as float32 blocks in row order, and one row's vector. Columns it is not asked
for (for example the `predicted_*` columns of a store made with predictions) are never read.
"""
from __future__ import annotations

import os
from typing import Iterator, Protocol

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.hdf5 import VIRTUAL_STORE


class IncompleteStore(FileNotFoundError):
    """The output has no manifest.json (the run did not finish, or is still running), or a feature
    file its manifest lists is gone."""


class StoreReader(Protocol):
    def column(self, name: str) -> list:
        """A per-row metadata column (`key`, `uri`, ...) as a list, in row order."""

    def blocks(self, output: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row index, float32 block of at most chunk_rows x D), in row order."""

    def row(self, output: str, index: int) -> np.ndarray:
        """One row's float32 vector."""

    def close(self) -> None:
        """Release open files."""


def _as_matrix(column, dim: int) -> np.ndarray:
    """A fixed_size_list Arrow column -> (rows, dim) float32 without a Python loop."""
    values = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32, copy=False)


class ParquetReader:
    """Parquet shards, read in the order given (sorted shard names), through Beam's filesystems."""

    def __init__(self, paths: list[str], outputs: dict[str, int]):
        self.paths = paths
        self.outputs = outputs

    def column(self, name: str) -> list:
        values: list = []
        for path in self.paths:
            with FileSystems.open(path) as handle:
                values += pq.read_table(handle, columns=[name]).column(name).to_pylist()
        return values

    def blocks(self, output: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for path in self.paths:
            with FileSystems.open(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=[output]):
                    block = _as_matrix(batch.column(0), self.outputs[output])
                    yield start, block
                    start += len(block)

    def row(self, output: str, index: int) -> np.ndarray:
        # Footers say where each row group starts, so only the row group holding the row is read.
        start = 0
        for path in self.paths:
            with FileSystems.open(path) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    rows = parquet.metadata.row_group(group).num_rows
                    if start <= index < start + rows:
                        table = parquet.read_row_group(group, columns=[output])
                        return _as_matrix(table.column(0), self.outputs[output])[index - start].copy()
                    start += rows
        raise IndexError(f"row {index} is beyond the store's {start} rows")

    def close(self) -> None:
        pass


class HDF5Reader:
    """The virtual `features.h5` over every shard (h5py reads it from a local folder only)."""

    def __init__(self, root: str):
        import h5py

        path = FileSystems.join(root, VIRTUAL_STORE)
        if not (FileSystems.get_scheme(path) is None and os.path.exists(path)):
            raise IncompleteStore(f"{path!r} is missing or not on a local disk; h5py reads the "
                                  f"virtual store from a local folder (copy the store locally)")
        self.file = h5py.File(path, "r")

    def column(self, name: str) -> list:
        dataset = self.file[name]
        return list(dataset.asstr()[:]) if dataset.dtype.kind == "O" else dataset[:].tolist()

    def blocks(self, output: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        dataset = self.file[output]
        for start in range(0, dataset.shape[0], chunk_rows):
            yield start, dataset[start:start + chunk_rows].astype(np.float32, copy=False)

    def row(self, output: str, index: int) -> np.ndarray:
        return self.file[output][index].astype(np.float32)

    def dataset(self, output: str):
        return self.file[output]

    def close(self) -> None:
        self.file.close()
