"""Long runs survive: SIGKILL the whole process tree at known points, then --resume.

A failpoint (pipeline.job.journal.failpoint, driven by FEATURIZE_FAILPOINTS) holds the run at
a named point; the test then kills the run's process group as a dying machine would and
resumes. Every key must end exactly once in the store, with vectors identical to an
uninterrupted run, and the resumed run must reuse what was committed.
"""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.job.config import ConfigError
from pipeline.job.launch import run
from tests.helpers.runs import IN_MEMORY, LOCAL, N_SHARDS, featurize_args
from tests.helpers.crash import error_keys, read_store, run_and_kill
from tests.helpers.samples import _encode, _rgb

@pytest.fixture(scope="module")
def reference(numbered_reference):
    """layout -> (output, {key: vector}, manifest) of an uninterrupted in-memory Parquet run, made once per
    session (tests/conftest.py). It is the reference of both formats: a format stores the vectors, it does
    not change them, so an HDF5 store must hold exactly the Parquet run's vectors, counts and error rows."""
    return numbered_reference


def check_resumed(out, fmt, layout, manifest, reference):
    _, expected, reference_manifest = reference(layout)
    got = read_store(out, fmt)
    assert sorted(got) == sorted(expected)
    for key, vector in expected.items():
        assert np.array_equal(got[key], vector), f"{key}: vectors differ from the uninterrupted run"
    counts, want = manifest["counts"], reference_manifest["counts"]
    assert {k: counts[k] for k in ("inputs", "rows", "errors", "errors_by_stage")} == \
           {k: want[k] for k in ("inputs", "rows", "errors", "errors_by_stage")}
    assert 0 < counts["reused"] <= counts["inputs"]
    assert error_keys(out) == error_keys(pathlib.Path(reference_manifest["config"]["output"]))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["counts"] == counts


# Every run is killed as a whole process tree (a launcher and two worker processes). The resume runs
# in this process, except once with worker processes of its own (multi_processing), as a killed
# production run would be resumed; tests/job/test_portable.py resumes a killed run on the portable runner.
@pytest.mark.parametrize("layout, fmt, failpoint, resume_mode", [
    ("tar", "parquet", "unit-read@3", "in_memory"),             # killed mid-unit, while reading and inferring
    ("tar", "hdf5", "manifest", "in_memory"),                   # killed in the final manifest step
    ("files", "hdf5", "unit-commit@2", "multi_processing"),     # killed with a unit's files in place but not journaled
    ("files", "parquet", "unit-read@2", "in_memory"),
])
def test_killed_run_resumes_to_exactly_the_uninterrupted_store(layout, fmt, failpoint, resume_mode, numbered,
                                                               reference, small_weights, tmp_path):
    shards, folder = numbered
    source = shards if layout == "tar" else folder
    out = tmp_path / "out"
    run_and_kill(featurize_args(source, out, small_weights, fmt, *LOCAL), failpoint, tmp_path)
    assert not (out / "manifest.json").exists(), "a killed run must not look complete"
    committed = list((out / "_featurize" / "units").glob("*.json"))
    assert committed, "nothing was committed before the kill"
    with pytest.raises(ConfigError, match="not empty.*--resume.*--overwrite"):
        run(featurize_args(source, out, small_weights, fmt, *LOCAL))
    resume = LOCAL if resume_mode == "multi_processing" else IN_MEMORY
    manifest = run(featurize_args(source, out, small_weights, fmt, *resume, "--resume"))
    check_resumed(out, fmt, layout, manifest, reference)
    assert manifest["counts"]["reused"] >= len(committed)  # every committed unit holds at least one input
    assert not list((out / "_featurize" / "tmp").glob("*")) if (out / "_featurize" / "tmp").exists() else True
    if failpoint == "manifest":
        assert manifest["units"]["processed"] == 0 and manifest["counts"]["reused"] == manifest["counts"]["inputs"]


def test_resume_refuses_a_configuration_that_changes_vectors(numbered, reference, small_weights, tmp_path):
    shards, _ = numbered
    out = reference("tar")[0]
    for flags, field in ((["--pooling", "max"], "pooling"), (["--image-size", "64"], "input_size"),
                         (["--dtype", "float16"], "dtype"), (["--weights", "none"], "weights")):
        args = featurize_args(shards, out, small_weights, "parquet", "--resume")
        args[args.index("--image-size") + 1] = "64" if field == "input_size" else args[args.index("--image-size") + 1]
        if field == "weights":
            args[args.index("--weights") + 1] = "none"
        # The flag as the user types it, both sides: `--image-size 48x48`, not `input_size [48, 48]`.
        typed = {"pooling": "--pooling avg but this run has --pooling max",
                 "input_size": "--image-size 48x48 but this run has --image-size 64x64",
                 "dtype": "--dtype float32 but this run has --dtype float16",
                 "weights": "but this run has --weights none"}[field]
        with pytest.raises(ConfigError, match=f"made with .*{re.escape(typed)};"):
            run([*args, *(flags if field in ("pooling", "dtype") else [])])
    with pytest.raises(ConfigError, match="made with --format parquet but this run has --format hdf5"):
        run(featurize_args(shards, out, small_weights, "hdf5", "--resume"))


def test_incremental_run_processes_only_new_inputs_and_reports_removed(small_weights, tmp_path):
    folder = tmp_path / "photos"
    for i in range(12):
        (folder / f"day{i // 6}").mkdir(parents=True, exist_ok=True)
        (folder / f"day{i // 6}" / f"{i:02d}.jpg").write_bytes(_encode(_rgb(32, 32, 100 + i), "JPEG"))
    out = tmp_path / "out"
    args = featurize_args(folder, out, small_weights, "parquet", "--direct_running_mode=in_memory", "--resume")
    first = run(args)
    assert first["counts"]["inputs"] == 12 and first["counts"]["reused"] == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    (folder / "day2").mkdir()
    for i in range(12, 17):
        (folder / "day2" / f"{i:02d}.jpg").write_bytes(_encode(_rgb(32, 32, 100 + i), "JPEG"))
    (folder / "day0" / "00.jpg").unlink()  # removed from the input: kept in the store, reported
    second = run(args)
    assert second["counts"]["inputs"] == 17 and second["counts"]["reused"] == 12
    assert second["units"]["processed"] >= 1
    assert second["removed"] == {"count": 1, "listed": ["day0/00.jpg"], "kind": "files"}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    assert {name: after[name] for name in before} == before, "committed units were rewritten"
    keys = pq.read_table(out / "features").column("key").to_pylist()
    assert sorted(keys) == sorted([f"day{i // 6}/{i:02d}.jpg" for i in range(17)])


def test_dry_run_lists_units_and_what_resume_would_skip(numbered, reference, small_weights, tmp_path, capsys):
    from pipeline.cli import main

    shards, _ = numbered
    fresh = tmp_path / "fresh"
    assert main(["run", *featurize_args(shards, fresh, small_weights), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{N_SHARDS} units to process" in out and "0 units already committed" in out
    assert not fresh.exists(), "a dry run writes nothing"
    done = reference("tar")[0]
    assert main(["run", *featurize_args(shards, done, small_weights), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 units to process" in out and f"{N_SHARDS} units already committed" in out


def test_a_shard_missing_at_first_is_read_when_it_appears(numbered, small_weights, tmp_path):
    """A missing shard is an error row, but its unit is marked for retry: a --resume reads it once it exists."""
    import shutil

    shards, _ = numbered
    here = tmp_path / "shards"
    here.mkdir()
    for name in ("part-0000.tar", "part-0001.tar"):
        shutil.copy(pathlib.Path(shards).parent / name, here / name)
    args = featurize_args(here / "part-{0000..0002}.tar", tmp_path / "out", small_weights, "parquet",
                          "--direct_running_mode=in_memory", "--resume")
    first = run(args)
    assert first["counts"]["errors_by_stage"]["read"] == 1 and first["counts"]["inputs"] == 21
    shutil.copy(pathlib.Path(shards).parent / "part-0002.tar", here / "part-0002.tar")
    second = run(args)
    assert second["units"]["processed"] == 1 and second["counts"]["reused"] == 20
    assert second["counts"]["inputs"] == 30 and second["counts"]["errors_by_stage"]["read"] == 0
    assert len(read_store(tmp_path / "out", "parquet")) == 30 - 1  # the corrupt image is a decode error


def test_resuming_a_finished_store_withdraws_its_manifest_until_the_new_work_is_done(small_weights, tmp_path,
                                                                                       monkeypatch):
    from pipeline.job.launch import _start_over_or_resume, prepare

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for i in range(3):
        (tmp_path / "photos" / f"{i}.jpg").write_bytes(_encode(_rgb(32, 32, i), "JPEG"))
    run(featurize_args("photos", "out", small_weights, "hdf5", "--direct_running_mode=in_memory"))
    (tmp_path / "photos" / "3.jpg").write_bytes(_encode(_rgb(32, 32, 3), "JPEG"))
    # the same root spelled another way is the same store
    job = prepare(featurize_args(f"{tmp_path}/photos", "out", small_weights, "hdf5", "--resume"))
    assert len(job.plan.pending) == 1
    _start_over_or_resume(job)
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "features.h5").exists()
    done = run(featurize_args("./photos", "out", small_weights, "hdf5", "--direct_running_mode=in_memory",
                              "--resume"))
    assert done["counts"]["inputs"] == 4 and done["counts"]["reused"] == 3
    assert sorted(read_store(tmp_path / "out", "hdf5")) == [f"{i}.jpg" for i in range(4)]
