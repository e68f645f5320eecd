"""Duplicate sample keys across shards: hashed, partitioned, resolved by a rule that never rewrites the store."""
import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.job.dedupe import PARTITIONS, FindDuplicateKeys, KeySet, key_hashes, partition_keys, resolve_partition
from pipeline.elements import WorkUnit
from pipeline.job.entries import UnitEntry


def key_sets(unit_id, shard, keys, committed=False):
    return [key_set for _, key_set in partition_keys(unit_id, shard, committed, key_hashes(keys))]


def resolve(*groups):
    return sorted(resolve_partition((0, [s for group in groups for s in group])))


def test_hashes_are_stable_and_partitions_split_them_without_loss():
    hashes = key_hashes([f"k{i}" for i in range(5000)])
    assert hashes.dtype.itemsize == 16 and len(np.unique(hashes)) == 5000
    assert np.array_equal(key_hashes(["k1"]), hashes[1:2])
    parts = list(partition_keys("u", "s.tar", False, hashes))
    assert len(parts) == PARTITIONS and sum(len(s.hashes) for _, s in parts) == 5000
    positions = np.sort(np.concatenate([s.positions for _, s in parts]))
    assert np.array_equal(positions, np.arange(5000))


def test_first_occurrence_in_shard_order_keeps_a_key():
    a = key_sets("ua", "data/a.tar", ["x", "y", "x"])  # x twice inside one shard
    b = key_sets("ub", "data/b.tar", ["y", "z"])
    assert resolve(b, a) == [("ua", (2, "a.tar (image member 0)")), ("ub", (0, "a.tar (image member 1)"))]


def test_a_committed_unit_keeps_its_keys_even_against_an_earlier_shard():
    committed = key_sets("uz", "data/z.tar", ["x"], committed=True)
    new = key_sets("ua", "data/a.tar", ["x", "w"])
    assert resolve(new, committed) == [("ua", (0, "z.tar, already in the store"))]
    assert resolve(key_sets("u1", "s1.tar", ["q"], True), key_sets("u2", "s2.tar", ["q"], True)) == []


def test_find_duplicate_keys_reads_committed_units_kept_keys(tmp_path):
    """The transform end to end: shard scans and a committed unit's saved hashes meet in one partition."""
    import io
    import tarfile

    from pipeline.job.dedupe import save_kept_keys

    def tar(path, names):
        with tarfile.open(path, "w") as archive:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))

    tar(tmp_path / "a.tar", ["k1.jpg", "k2.jpg"])
    tar(tmp_path / "b.tar", ["k2.png", "k3.jpg", "notes.txt", "k9.jpg"])
    save_kept_keys(str(tmp_path / "_featurize" / "units" / "tar-old.x.keys.npy"), key_hashes(["k9"]))
    old_entry = UnitEntry("tar-old", "tar", str(tmp_path / "old.tar"), 1, rows=1,
                          files={"keys": "_featurize/units/tar-old.x.keys.npy"})
    units = [(WorkUnit("tar-a", "tar", str(tmp_path / "a.tar")), None),
             (WorkUnit("tar-b", "tar", str(tmp_path / "b.tar")), None),
             (WorkUnit("tar-old", "tar", old_entry.source), old_entry)]
    with TestPipeline(runner="FnApiRunner") as p:
        found = p | beam.Create(units) | FindDuplicateKeys(str(tmp_path))
        assert_that(found["losers"], equal_to([("tar-b", (0, "a.tar (image member 1)")),
                                               ("tar-b", (2, "old.tar, already in the store"))]), label="losers")
        # image members only: the scan and the reader count the same members
        assert_that(found["scanned"], equal_to([("tar-a", 2), ("tar-b", 3)]), label="scanned")


def test_key_set_is_what_travels():
    [(_, key_set)] = partition_keys("u", "s.tar", True, key_hashes(["only"]))
    assert isinstance(key_set, KeySet) and key_set.committed and key_set.positions.tolist() == [-1]
