"""One reader per store format behind one small interface, so `FeatureStore` never branches on it.

A reader knows where a format keeps its rows; it returns the per-row metadata (every column but
the vectors: key, uri, width, height and any `predicted_*` columns) as one Arrow table, an
output's vectors as float32 blocks in row order, and one row's vector. Vector columns it is not
asked for are never read.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import pyarrow as pa

from pipeline import files

from pipeline.model import predictions
from pipeline.store.schema import VIRTUAL_STORE


class IncompleteStore(FileNotFoundError):
    """The output has no manifest.json (the run did not finish, or is still running), or a feature
    file its manifest lists is gone."""


class StoreReader(Protocol):
    def metadata(self) -> pa.Table:
        """Every per-row column except the vectors (`key`, `uri`, ...), in row order."""

    def first(self) -> tuple[str, str]:
        """Row 0's (key, uri), reading no more than its row group: for a hint after a run of any size."""

    def blocks(self, output: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row index, float32 block of at most chunk_rows x D), in row order."""

    def row(self, output: str, index: int) -> np.ndarray:
        """One row's float32 vector."""

    def close(self) -> None:
        """Release open files."""


def _as_matrix(column, dim: int) -> np.ndarray:
    """A fixed_size_list Arrow column -> (rows, dim) float32 without a Python loop."""
    values = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    flat = values.flatten()
    if flat.null_count or not pa.types.is_floating(flat.type):
        data = flat.to_numpy(zero_copy_only=False)
    else:  # a view of the Arrow buffer: Array.to_numpy imports pandas (a second), even for a zero-copy view
        dtype = np.dtype(f"float{flat.type.bit_width}")
        data = np.frombuffer(flat.buffers()[1], dtype, count=len(flat), offset=flat.offset * dtype.itemsize)
    return data.reshape(-1, dim).astype(np.float32, copy=False)


_NO_ROWS = pa.Table.from_batches([], schema=pa.schema([("key", pa.string()), ("uri", pa.string())]))


class ParquetReader:
    """Parquet shards, read in the order given (sorted shard names), from any filesystem."""

    def __init__(self, paths: list[str], outputs: dict[str, int]):
        self.paths = paths
        self.outputs = outputs

    def metadata(self) -> pa.Table:
        import pyarrow.parquet as pq

        tables = []
        for path in self.paths:
            with files.open_read(path) as handle:
                parquet = pq.ParquetFile(handle)
                names = [name for name in parquet.schema_arrow.names if name not in self.outputs]
                tables.append(parquet.read(columns=names).replace_schema_metadata(None))
        return pa.concat_tables(tables) if tables else _NO_ROWS

    def first(self) -> tuple[str, str]:
        import pyarrow.parquet as pq

        for path in self.paths:
            with files.open_read(path) as handle:
                parquet = pq.ParquetFile(handle)
                if parquet.metadata.num_rows:
                    group = parquet.read_row_group(0, columns=["key", "uri"])
                    return group["key"][0].as_py(), group["uri"][0].as_py()
        raise IndexError("the store has no rows")

    def blocks(self, output: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        import pyarrow.parquet as pq

        start = 0
        for path in self.paths:
            with files.open_read(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=[output]):
                    block = _as_matrix(batch.column(0), self.outputs[output])
                    yield start, block
                    start += len(block)

    def row(self, output: str, index: int) -> np.ndarray:
        import pyarrow.parquet as pq

        # Footers say where each row group starts, so only the row group holding the row is read.
        start = 0
        for path in self.paths:
            with files.open_read(path) as handle:
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


# Arrow arrays built from their buffers: pa.array() imports pandas (a second) on its first call, which
# reading a store must not pay.
def _numeric_array(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _string_array(values: np.ndarray) -> pa.Array:
    """UTF-8 strings (an HDF5 string dataset read as bytes) as an Arrow string array."""
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
    if offsets[-1] >= 2 ** 31:  # beyond 32-bit offsets: let Arrow chunk it
        return pa.array([value.decode("utf-8") for value in values], pa.string())
    data = b"".join(values)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                            pa.py_buffer(data)])


def _arrow_column(dataset) -> pa.Array:
    """An HDF5 dataset of N values (or N x K, as Parquet's fixed_size_list) as an Arrow array."""
    strings = dataset.dtype.kind == "O"
    values = dataset[:]
    flat = values.reshape(-1)
    flat = _string_array(flat) if strings else _numeric_array(flat)
    return flat if values.ndim == 1 else pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


_PARQUET_ORDER = ["key", "uri", "width", "height", predictions.IDS, predictions.NAMES, predictions.SCORES]


class HDF5Reader:
    """The virtual `features.h5` over every shard (h5py reads it from a local folder only), or one shard
    (`path`: shards and features.h5 hold the same datasets)."""

    def __init__(self, root: str, outputs: dict[str, int], path: str | None = None):
        import h5py

        path = path or files.join(root, VIRTUAL_STORE)
        if not (files.is_local(path) and files.exists(path)):
            raise IncompleteStore(f"{path!r} is missing or not on a local disk; h5py reads the "
                                  f"virtual store from a local folder (copy the store locally)")
        self.file = h5py.File(path, "r")
        self.outputs = outputs

    def metadata(self) -> pa.Table:
        import h5py

        # Top-level datasets only: an output named LAYER/POOLING is a group. In Parquet's column order
        # (h5py lists names alphabetically).
        names = [name for name in self.file
                 if name not in self.outputs and isinstance(self.file[name], h5py.Dataset)]
        names.sort(key=lambda name: (_PARQUET_ORDER.index(name) if name in _PARQUET_ORDER else len(_PARQUET_ORDER), name))
        return pa.table({name: _arrow_column(self.file[name]) for name in names})

    def first(self) -> tuple[str, str]:
        key, uri = self.file["key"][0], self.file["uri"][0]
        return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in (key, uri))

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


class FilesReader:
    """Some of a store's feature files, read in the order given (an index's units, or the units it does not
    cover): the rows of each file, their metadata, and their vectors in blocks that never cross a file."""

    def __init__(self, fmt: str, paths: list[str], outputs: dict[str, int]):
        self.format = fmt
        self.paths = paths
        self.outputs = outputs

    def _shards(self) -> Iterator[HDF5Reader]:
        for path in self.paths:
            shard = HDF5Reader("", self.outputs, path)
            try:
                yield shard
            finally:
                shard.close()

    def rows(self) -> list[int]:
        """Each file's row count, from its footer (Parquet) or its key dataset's shape (HDF5)."""
        if self.format == "hdf5":
            return [int(shard.file["key"].shape[0]) for shard in self._shards()]
        import pyarrow.parquet as pq

        counts = []
        for path in self.paths:
            with files.open_read(path) as handle:
                counts.append(pq.ParquetFile(handle).metadata.num_rows)
        return counts

    def metadata(self) -> pa.Table:
        if self.format == "hdf5":
            tables = [shard.metadata() for shard in self._shards()]
            return pa.concat_tables(tables) if tables else _NO_ROWS
        return ParquetReader(self.paths, self.outputs).metadata()

    def blocks(self, output: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, counted over the files in order; float32 block of at most chunk_rows x D)."""
        if self.format != "hdf5":
            yield from ParquetReader(self.paths, self.outputs).blocks(output, chunk_rows)
            return
        start = 0
        for shard in self._shards():
            for first, block in shard.blocks(output, chunk_rows):
                yield start + first, block
            start += int(shard.file["key"].shape[0])
