"""pipeline.store.readers: a store's Parquet shards and its HDF5 virtual store read the same rows, blocks and
single rows."""
import glob

import numpy as np
import pytest

from pipeline.store.readers import HDF5Reader, IncompleteStore, ParquetReader
from tests.helpers.stores import clustered, generated_store


@pytest.fixture(scope="module")
def vectors():
    return {"embedding": clustered(50, dim=8, seed=3)}


def readers(tmp_path, vectors):
    parquet, hdf5 = tmp_path / "p", tmp_path / "h"
    generated_store(parquet, vectors, "parquet", units=3)
    generated_store(hdf5, vectors, "hdf5", units=3)
    outputs = {"embedding": 8}
    return ParquetReader(sorted(glob.glob(str(parquet / "features" / "*.parquet"))), outputs), HDF5Reader(str(hdf5), outputs)


def test_both_formats_read_the_same_rows_blocks_and_single_rows(tmp_path, vectors):
    want = vectors["embedding"]
    for reader in readers(tmp_path, vectors):
        try:
            meta = reader.metadata()
            assert meta.column_names[:2] == ["key", "uri"] and "embedding" not in meta.column_names
            assert meta.num_rows == 50 and reader.first() == (meta["key"][0].as_py(), meta["uri"][0].as_py())
            starts, blocks = zip(*reader.blocks("embedding", chunk_rows=7))
            got = np.concatenate(blocks)
            assert np.array_equal(got, want) and max(len(block) for block in blocks) <= 7
            assert list(starts) == [0, *np.cumsum([len(block) for block in blocks])[:-1]]  # each block's first row
            assert np.array_equal(reader.row("embedding", 33), want[33])
        finally:
            reader.close()


def test_a_row_beyond_the_store_and_a_missing_virtual_store_are_refused(tmp_path, vectors):
    parquet, _ = readers(tmp_path, vectors)
    with pytest.raises(IndexError, match="row 50 is beyond the store's 50 rows"):
        parquet.row("embedding", 50)
    with pytest.raises(IncompleteStore, match="features.h5' is missing"):
        HDF5Reader(str(tmp_path / "p"), {"embedding": 8})
