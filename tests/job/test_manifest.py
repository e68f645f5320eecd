"""The manifest: counts of every committed unit, checked against the files; written last or not at all."""
import json

import numpy as np
import pytest

from pipeline.job import journal
from pipeline.job.manifest import finalize_store
from pipeline.store.schema import MANIFEST
from tests.helpers.units import FINGERPRINT, row, write_unit


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_manifest_counts_every_committed_unit(tmp_path, fmt):
    import h5py

    write_unit(tmp_path, "files-1", range(3), ["x"], fmt)
    write_unit(tmp_path, "files-2", range(3, 5), [], fmt)
    template = {"format": fmt, "fingerprint": FINGERPRINT, "counts": {"reused": 4, "skipped": 1, "removed": 0}}
    document = finalize_store(str(tmp_path), template, started_at=0.0, expected_units=["files-2"])
    assert json.loads((tmp_path / MANIFEST).read_text()) == document
    assert document["counts"] == {"inputs": 6, "rows": 5, "errors": 1, "reused": 4, "skipped": 1, "removed": 0,
                                  "errors_by_stage": {"read": 0, "decode": 1, "infer": 0, "write": 0}}
    entries = journal.committed_units(str(tmp_path))
    assert document["files"] == {"features": [entries["files-1"]["files"]["features"],
                                              entries["files-2"]["files"]["features"]],
                                 "errors": [entries["files-1"]["files"]["errors"]]}
    assert document["units"] == {"committed": 2, "processed": 1}
    if fmt == "hdf5":
        with h5py.File(tmp_path / "features.h5") as store:
            assert store["key"].asstr()[:].tolist() == [f"k{i}" for i in range(5)]
            assert np.array_equal(store["embedding"][:], np.stack([row(i)["embedding"] for i in range(5)]))


def test_manifest_refuses_when_a_unit_of_the_run_is_not_committed(tmp_path):
    write_unit(tmp_path, "files-1", range(3), [])
    with pytest.raises(RuntimeError, match="1 work units were not committed.*--resume"):
        finalize_store(str(tmp_path), {"format": "parquet", "fingerprint": FINGERPRINT}, 0.0, ["files-1", "files-9"])
    assert not (tmp_path / MANIFEST).exists()
