"""pipeline.job.hdf5: a unit's HDF5 shard (ShardWriter) and features.h5 mapping every shard in order."""
import os

import h5py
import numpy as np

from pipeline.job.hdf5 import ShardWriter, shard_rows, write_virtual_store
from pipeline.store.schema import VIRTUAL_STORE
from tests.helpers.units import FINGERPRINT, row


def write_shard(path, indices):
    writer = ShardWriter(str(path), FINGERPRINT["outputs"], FINGERPRINT["dtype"], FINGERPRINT)
    for i in indices:
        writer.append(row(i))
    writer.close()
    return str(path)


def test_shards_are_mapped_in_order_into_one_virtual_store_with_an_empty_one_between(tmp_path):
    (tmp_path / "features").mkdir()
    shards = [write_shard(tmp_path / "features" / "a.h5", range(3)), write_shard(tmp_path / "features" / "b.h5", []),
              write_shard(tmp_path / "features" / "c.h5", range(3, 5))]
    assert [shard_rows(path) for path in shards] == [3, 0, 2]
    assert write_virtual_store(str(tmp_path), shards, FINGERPRINT["outputs"], "float32", FINGERPRINT) == 5
    with h5py.File(tmp_path / VIRTUAL_STORE) as store:
        assert store["key"].asstr()[:].tolist() == [f"k{i}" for i in range(5)]
        assert np.array_equal(store["embedding"][:], np.stack([row(i)["embedding"] for i in range(5)]))
        assert store["embedding"].is_virtual
    # the store names its shards relative to itself: the folder can move
    os.rename(tmp_path, tmp_path.with_name(tmp_path.name + "-moved"))
    with h5py.File(tmp_path.with_name(tmp_path.name + "-moved") / VIRTUAL_STORE) as store:
        assert store["key"].asstr()[4] == "k4"


def test_an_aborted_shard_leaves_no_local_file(tmp_path):
    writer = ShardWriter(str(tmp_path / "s.h5"), FINGERPRINT["outputs"], FINGERPRINT["dtype"], FINGERPRINT)
    writer.append(row(0))
    local = writer.local_path
    assert os.path.exists(local)
    writer.abort()
    assert not os.path.exists(local) and not (tmp_path / "s.h5").exists()
