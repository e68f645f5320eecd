"""The journal: commit protocol, orphans a crash leaves, failpoints."""
import json
import os
import subprocess
import sys
import time

from pipeline.job import journal


def test_commit_moves_files_into_place_then_writes_the_entry(tmp_path):
    out = str(tmp_path)
    temporary = journal.temp_path(out, "files-1", "attempt", "features.parquet")
    os.makedirs(os.path.dirname(temporary))
    with open(temporary, "wb") as handle:
        handle.write(b"rows")
    entry = journal.commit_unit(out, {"unit": "files-1", "inputs": 1},
                                {"features": (temporary, "features/files-1.parquet")})
    assert (tmp_path / "features" / "files-1.parquet").read_bytes() == b"rows" and not os.path.exists(temporary)
    assert entry["files"] == {"features": "features/files-1.parquet"} and "committed_at" in entry
    assert journal.committed_units(out) == {"files-1": entry}
    assert json.loads((tmp_path / "_featurize" / "units" / "files-1.json").read_text()) == entry


def test_remove_orphans_deletes_only_uncommitted_featurize_files(tmp_path):
    out = str(tmp_path)
    for path in ("features/files-1.parquet", "features/files-2.parquet", "errors/tar-x-1.parquet",
                 "features/notes.txt", "_featurize/tmp/files-3.a.features.parquet", "_featurize/units/tar-x-1.keys.npy"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    committed = [{"unit": "files-1", "files": {"features": "features/files-1.parquet"}}]
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
