"""The manifest: counts of every committed unit, checked against the files; written last or not at all."""
import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job import journal
from pipeline.job.manifest import finalize_store
from pipeline.store.schema import MANIFEST
from tests.helpers import slow_fs
from tests.helpers.units import FINGERPRINT, row, write_unit

TIMES = ("wall_time_s", "images_per_s", "finished_at")  # what differs between two finalizations


def committed_by_unit(out) -> dict:
    return {entry.unit: entry for entry in journal.iter_committed_units(str(out))}


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
    entries = committed_by_unit(tmp_path)
    assert document["files"] == {"features": [entries["files-1"].files["features"],
                                              entries["files-2"].files["features"]],
                                 "errors": [entries["files-1"].files["errors"]]}
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


def write_units(out, count):
    """`count` units of 2 rows each (every 5th with an error row); their ids."""
    ids = [f"files-{index:03d}" for index in range(count)]
    for index, unit in enumerate(ids):
        write_unit(out, unit, range(2 * index, 2 * index + 2), [f"bad{index}"] if index % 5 == 0 else [])
    return ids


def template():
    return {"format": "parquet", "fingerprint": FINGERPRINT, "counts": {"reused": 0, "skipped": 0, "removed": 0}}


def test_parallel_finalize_counts_exactly_what_the_sequential_one_counts(tmp_path):
    ids = write_units(tmp_path, 50)
    sequential = finalize_store(str(tmp_path), template(), 0.0, ids, threads=1)
    parallel = finalize_store(str(tmp_path), template(), 0.0, ids, threads=32)
    assert {k: v for k, v in parallel.items() if k not in TIMES} == {k: v for k, v in sequential.items()
                                                                     if k not in TIMES}
    assert parallel["counts"]["rows"] == 100 and parallel["counts"]["errors"] == 10
    assert parallel["units"] == {"committed": 50, "processed": 50}
    entries = committed_by_unit(tmp_path)
    assert parallel["files"]["features"] == [entries[unit].files["features"] for unit in ids]


def test_parallel_finalize_still_catches_a_shard_that_lost_rows(tmp_path):
    ids = write_units(tmp_path, 20)
    shard = tmp_path / committed_by_unit(tmp_path)["files-013"].files["features"]
    pq.write_table(pq.read_table(shard).slice(0, 1), shard)
    with pytest.raises(RuntimeError, match="feature files hold 39 rows but the journal says 40"):
        finalize_store(str(tmp_path), template(), 0.0, ids, threads=32)
    assert not (tmp_path / MANIFEST).exists()


def test_an_unreadable_shard_footer_fails_the_parallel_finalize(tmp_path):
    ids = write_units(tmp_path, 20)
    shard = tmp_path / committed_by_unit(tmp_path)["files-007"].files["features"]
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(pa.ArrowInvalid):
        finalize_store(str(tmp_path), template(), 0.0, ids, threads=32)
    assert not (tmp_path / MANIFEST).exists()


def test_finalize_on_a_slow_filesystem_overlaps_its_reads_and_keeps_every_file(tmp_path):
    ids = write_units(tmp_path, 40)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    with slow_fs.latency(0.005):
        document = finalize_store(slow_fs.slow_path(str(tmp_path)), template(), 0.0, ids, threads=32)
        seen = slow_fs.stats()
    assert document["counts"]["rows"] == 80 and json.loads((tmp_path / MANIFEST).read_text()) == document
    after = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    assert after == sorted(before + [pathlib.Path(MANIFEST)])  # orphan removal through slow:// deleted nothing
    assert seen["calls"] > 80 and seen["peak_in_flight"] >= 8  # 40 entries + 40 footers, not one at a time


def test_the_run_summary_says_the_counts_and_warns_of_errors_skipped_files_and_lost_inputs():
    from pipeline.job.manifest import run_summary

    document = {"counts": {"rows": 7, "errors": 3, "inputs": 10, "reused": 4}, "wall_time_s": 2.04,
                "config": {"output": "out/"}, "errors_top": [{"error": "decode UnidentifiedImageError", "count": 3,
                                                              "example": "a.jpg: cannot identify"}],
                "skipped": {"count": 2, "by_extension": {".txt": 1, ".mov": 1}},
                "removed": {"count": 1, "kind": "files", "listed": ["gone.jpg"]}}
    line, notes = run_summary(document)
    assert line == "7 feature rows, 3 error rows from 10 inputs, 4 reused from earlier runs in 2.0 s -> out/"
    assert notes == [
        "warning: 30% of the inputs are error rows; most common: decode UnidentifiedImageError (3), e.g. a.jpg: "
        "cannot identify; `featurize inspect` lists them (--max-error-rate stops a run early)",
        "skipped 2 files that are not images (.txt 1, .mov 1); `featurize inspect` lists them",
        "warning: 1 files in the store are no longer in --input (first: gone.jpg); their rows stay in the store"]
    quiet = dict(document, counts={"rows": 10, "errors": 0, "inputs": 10}, skipped={"count": 0},
                 removed={"count": 0})
    assert run_summary(quiet) == ("10 feature rows, 0 error rows from 10 inputs in 2.0 s -> out/", [])
