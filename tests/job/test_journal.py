"""The journal: commit protocol, orphans a crash leaves, failpoints, entries read in parallel."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline import files
from pipeline.job import journal
from pipeline.job.entries import UnitEntry
from tests.helpers import slow_fs


def test_commit_moves_files_into_place_then_writes_the_entry(tmp_path):
    out = str(tmp_path)
    temporary = journal.temp_path(out, "files-1", "attempt", "features.parquet")
    os.makedirs(os.path.dirname(temporary))
    with open(temporary, "wb") as handle:
        handle.write(b"rows")
    entry = journal.commit_unit(out, UnitEntry("files-1", "files", "", 1, rows=1),
                                {"features": (temporary, "features/files-1.parquet")})
    assert (tmp_path / "features" / "files-1.parquet").read_bytes() == b"rows" and not os.path.exists(temporary)
    assert entry.files == {"features": "features/files-1.parquet"} and entry.committed_at is not None
    assert list(journal.iter_committed_units(out)) == [entry]
    assert json.loads((tmp_path / "_featurize" / "units" / "files-1.json").read_text()) == entry.to_json()


def test_remove_orphans_deletes_only_uncommitted_featurize_files(tmp_path):
    out = str(tmp_path)
    for path in ("features/files-1.parquet", "features/files-2.parquet", "errors/tar-x-1.parquet",
                 "features/notes.txt", "_featurize/tmp/files-3.a.features.parquet", "_featurize/units/tar-x-1.keys.npy"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    committed = [UnitEntry("files-1", "files", "", 1, rows=1, files={"features": "features/files-1.parquet"})]
    removed = journal.remove_orphans(out, committed)
    assert sorted(os.path.relpath(p, out) for p in removed) == [
        "_featurize/tmp/files-3.a.features.parquet", "_featurize/units/tar-x-1.keys.npy",
        "errors/tar-x-1.parquet", "features/files-2.parquet"]
    assert (tmp_path / "features" / "files-1.parquet").exists() and (tmp_path / "features" / "notes.txt").exists()


def test_failpoint_holds_only_at_the_asked_hit(tmp_path):
    """In a child process: the 2nd `unit-commit` holds (writes its marker and sleeps), the 1st passes."""
    code = ("from pipeline.job import journal\n"
            "journal.failpoint('unit-commit')\n"
            "print('passed first', flush=True)\n"
            "journal.failpoint('unit-commit')\n"
            "print('passed second', flush=True)\n")
    env = dict(os.environ, FEATURIZE_FAILPOINTS="unit-commit@2", FEATURIZE_FAILPOINT_DIR=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:  # wait for the marker, not for a fixed timeout: then give a child that did not hold time to go on
        deadline = time.monotonic() + 120
        while not (tmp_path / "unit-commit").exists():
            assert child.poll() is None, "the child ended without holding"
            assert time.monotonic() < deadline, "the failpoint was never reached"
            time.sleep(0.05)
        time.sleep(1)
        assert child.poll() is None, "the child did not hold at the 2nd unit-commit"
    finally:
        child.kill()
    stdout, _ = child.communicate(timeout=30)
    assert "passed first" in stdout and "passed second" not in stdout
    journal.failpoint("unit-commit")  # this process has no FEATURIZE_FAILPOINTS: a no-op


def write_entries(out, count):
    """`count` journal entries (no files), committed as featurize commits them; their unit ids."""
    ids = [f"files-{index:04d}" for index in range(count)]
    for unit in ids:
        journal.commit_unit(out, UnitEntry(unit, "files", "", 1, rows=1, keys=(f"{unit}/k",)), {})
    return ids


def test_parallel_read_of_the_journal_equals_the_sequential_one_in_unit_id_order(tmp_path):
    out = str(tmp_path)
    # "tar-s-1-x.json" sorts before "tar-s-1.json" but its id after: the order is the ids'
    ids = write_entries(out, 48)
    for unit in ("tar-s-1", "tar-s-1-x"):
        journal.commit_unit(out, UnitEntry(unit, "tar", "s.tar", 1, rows=1), {})
    sequential = {entry.unit: entry for entry in journal.iter_committed_units(out, threads=1)}
    parallel = {entry.unit: entry for entry in journal.iter_committed_units(out, threads=32)}
    assert parallel == sequential and len(parallel) == 50
    assert list(parallel) == list(sequential) == sorted(ids + ["tar-s-1", "tar-s-1-x"])
    assert all(parallel[unit].keys == (f"{unit}/k",) for unit in ids)


def test_in_parallel_returns_results_in_the_order_of_paths_not_of_completion():
    """Each read waits for the next one to finish, so they complete in reverse order."""
    paths = [f"p{index}" for index in range(10)]
    done = {path: threading.Event() for path in paths}
    finished = []

    def read(path):
        index = paths.index(path)
        if index + 1 < len(paths):
            assert done[paths[index + 1]].wait(timeout=30), "the reads did not run concurrently"
        finished.append(path)
        done[path].set()
        return path.upper()

    assert files.in_parallel(read, paths, threads=len(paths)) == [path.upper() for path in paths]
    assert finished == paths[::-1]


def test_in_parallel_raises_a_failing_call_and_starts_no_more_reads():
    paths = [f"p{index}" for index in range(200)]
    calls = []

    def read(path):
        calls.append(path)
        if path == "p0":
            raise PermissionError(f"{path}: access denied")
        time.sleep(0.01)
        return path

    with pytest.raises(PermissionError, match="p0: access denied"):
        files.in_parallel(read, paths, threads=2)
    assert len(calls) < len(paths)  # the queued reads were cancelled, not run and dropped


def test_an_unreadable_entry_fails_the_parallel_read_of_the_journal(tmp_path):
    out = str(tmp_path)
    write_entries(out, 50)
    (tmp_path / "_featurize" / "units" / "files-0031.json").write_text('{"unit": "files-0031", ')
    with pytest.raises(json.JSONDecodeError):
        list(journal.iter_committed_units(out, threads=32))


@pytest.fixture
def slow_disk():
    with slow_fs.latency(0.005):
        yield slow_fs


def test_the_journal_on_a_slow_filesystem_is_read_with_many_requests_in_flight(tmp_path, slow_disk):
    out = str(tmp_path)
    ids = write_entries(out, 200)
    slow_disk.configure(latency_s=0.005)
    sequential = {e.unit: e for e in journal.iter_committed_units(slow_fs.slow_path(out), threads=1)}
    one_by_one = slow_disk.stats()
    slow_disk.configure(latency_s=0.005)
    parallel = {e.unit: e for e in journal.iter_committed_units(slow_fs.slow_path(out), threads=32)}
    overlapped = slow_disk.stats()
    assert list(parallel) == list(sequential) == ids and parallel == sequential
    assert one_by_one["calls"] == overlapped["calls"] == 201  # one listing, one read per entry
    assert one_by_one["peak_in_flight"] == 1
    assert overlapped["peak_in_flight"] >= 8  # up to 32 waits overlap instead of 200 in a row
