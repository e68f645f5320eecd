"""End to end: the zoo of good and bad inputs, as a folder and as tar shards, on two local running modes."""
import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job.config import ConfigError
from pipeline.logs import RunFailed
from pipeline.model.runtime import build_feature_model
from pipeline.model.spec import ModelSpec
from pipeline.images import DecodeSpec, decode_image
from pipeline.store.schema import FINGERPRINT_KEY
from tests.helpers.runs import MODES, TEST_MODEL, TEST_SIZE, check_metrics_match_counts, run_small
from tests.helpers.samples import BOMB_MAX_PIXELS, webdataset_key

def read_parquet(out, prefix):
    files = sorted(glob.glob(f"{out}/{prefix}/*.parquet"))
    assert files, f"no {prefix} files in {out}"
    return pa.concat_tables([pq.read_table(f) for f in files]), files


def relative_l2(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-30)


@pytest.mark.parametrize("layout, mode, sharing", [
    ("folder", "in_process", "process"),
    ("tar", "in_process", "process"),
    ("tar", "multi_processing", "process"),
    ("folder", "multi_processing", "machine"),  # one model per machine, shared by the worker processes
])
def test_every_input_ends_in_exactly_one_place(layout, mode, sharing, zoo_samples, zoo_folder, zoo_shards,
                                               small_weights, tmp_path):
    source = zoo_folder if layout == "folder" else f"{zoo_shards}/shard-{{000000..000002}}.tar"
    key_of = (lambda s: s.name) if layout == "folder" else (lambda s: webdataset_key(s.name))
    manifest = run_small(source, tmp_path / "out", small_weights, *MODES[mode], "--model-sharing", sharing)
    assert manifest["config"]["model_sharing"] == sharing

    features, _ = read_parquet(tmp_path / "out", "features")
    errors, _ = read_parquet(tmp_path / "out", "errors")
    valid = {key_of(s): s for s in zoo_samples if s.valid}
    invalid = {key_of(s): s for s in zoo_samples if not s.valid}

    keys = features.column("key").to_pylist()
    assert len(keys) == len(set(keys)), "duplicate keys"
    assert sorted(keys) == sorted(valid)
    error_keys = errors.column("key").to_pylist()
    assert sorted(error_keys) == sorted(invalid)
    assert set(errors.column("stage").to_pylist()) == {"decode"}
    assert manifest["counts"]["inputs"] == len(zoo_samples) == manifest["counts"]["rows"] + manifest["counts"]["errors"]
    assert manifest["counts"]["errors_by_stage"]["decode"] == len(invalid)

    # Sizes are the originals a viewer shows; vectors are what the model gives for that very image.
    dim = manifest["fingerprint"]["outputs"]["embedding"]
    assert features.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    spec = DecodeSpec(TEST_SIZE, TEST_SIZE, max_pixels=BOMB_MAX_PIXELS)
    model = build_feature_model(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights), batch_size=8)
    rows = features.to_pylist()
    pixels = np.stack([decode_image(valid[r["key"]].data, spec)[0] for r in rows])
    expected = model(pixels)["embedding"]
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert relative_l2(got, expected).max() <= 1e-5
    assert [(r["width"], r["height"]) for r in rows] == [(valid[r["key"]].width, valid[r["key"]].height) for r in rows]

    stored = json.loads(pq.ParquetFile(glob.glob(f"{tmp_path}/out/features/*.parquet")[0])
                        .schema_arrow.metadata[FINGERPRINT_KEY])
    assert stored == manifest["fingerprint"] and stored["backbone"] == TEST_MODEL
    check_metrics_match_counts(manifest)


def test_output_directory_is_protected_unless_overwrite(zoo_folder, small_weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "features").mkdir()
    (out / "features" / "files-0123456789abcdef.parquet").write_bytes(b"stale")
    (out / "features" / "my-notes.parquet").write_bytes(b"not featurize's")
    with pytest.raises(ConfigError, match="not empty.*--resume.*--overwrite"):
        run_small(zoo_folder, out, small_weights, "--direct_running_mode=in_memory")
    with pytest.raises(ConfigError, match="not a featurize store"):
        run_small(zoo_folder, out, small_weights, "--direct_running_mode=in_memory", "--resume")
    manifest = run_small(zoo_folder, out, small_weights, "--direct_running_mode=in_memory", "--overwrite")
    assert not (out / "features" / "files-0123456789abcdef.parquet").exists()
    assert (out / "notes.txt").read_text() == "mine"
    (out / "features" / "my-notes.parquet").unlink()  # only featurize's files were removed
    features, _ = read_parquet(out, "features")
    assert features.num_rows == manifest["counts"]["rows"] > 0


def test_files_not_read_are_listed_as_skipped_and_inspect_shows_them(small_weights, tmp_path, capsys):
    from pipeline.cli import main
    from tests.helpers.samples import _encode, _rgb

    source = tmp_path / "in"
    (source / "notes").mkdir(parents=True)
    for i in range(3):
        (source / f"{i}.jpg").write_bytes(_encode(_rgb(20, 20, i), "JPEG"))
    (source / "DSC_0007").write_bytes(_encode(_rgb(20, 20, 9), "JPEG"))  # no extension, sniffed as a JPEG
    for i in range(1001):
        (source / "notes" / f"n{i:04d}.txt").write_text("x")
    (source / "clip.mov").write_bytes(b"\x00\x00\x00\x14ftypqt  ")
    out = tmp_path / "out"
    manifest = run_small(source, out, small_weights, "--direct_running_mode=in_memory")
    assert manifest["counts"]["inputs"] == 4 == manifest["counts"]["rows"] and manifest["counts"]["skipped"] == 1002
    skipped = manifest["skipped"]
    assert skipped["by_extension"] == {".mov": 1, ".txt": 1001} and len(skipped["keys"]) == 1000
    assert skipped["keys"][0] == "clip.mov" and skipped["file"] == "_featurize/skipped.txt"
    listed = (out / skipped["file"]).read_text().split()
    assert len(listed) == 1002 and listed[-1] == "notes/n1000.txt"
    assert "DSC_0007" in pq.read_table(out / "features").column("key").to_pylist()
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "skipped    1002 files that are not images: .mov 1, .txt 1001" in shown
    assert "... 982 more (all in " in shown and "skipped.txt)" in shown


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_transient_read_faults_are_retried_not_recorded(layout, numbered, small_weights, tmp_path, monkeypatch):
    """Connection resets on open and a timeout in the middle of a shard: the unit is read again, and the
    store equals a run without faults (no read error rows)."""
    from tests.helpers import flaky

    monkeypatch.setattr("pipeline.inputs.retries.RETRY_BACKOFF_S", 0.01)
    shards, folder = numbered
    source = f"{flaky.PREFIX}{folder}" if layout == "folder" else f"{flaky.PREFIX}{shards}"
    flaky.arm()  # no faults: count the opens a clean run makes
    clean = run_small(source, tmp_path / "clean", small_weights, "--direct_running_mode=in_memory")
    opens_without_faults = flaky.opened()
    # two failing opens; then one shard (or file) read breaks after 3 KB
    flaky.arm(failing_opens=2, fail_read_after=3000, failing_reads=1)
    faulty = run_small(source, tmp_path / "faulty", small_weights, "--direct_running_mode=in_memory")
    assert flaky.opened() > opens_without_faults  # the faults were met and the reads repeated
    assert faulty["counts"] == clean["counts"]
    assert faulty["counts"]["errors_by_stage"]["read"] == (1 if layout == "tar" else 0)  # the duplicate key only
    got = {r["key"]: r["embedding"] for r in read_parquet(tmp_path / "faulty", "features")[0].to_pylist()}
    want = {r["key"]: r["embedding"] for r in read_parquet(tmp_path / "clean", "features")[0].to_pylist()}
    assert got == want


def test_a_fault_that_persists_fails_the_run_and_commits_nothing_of_that_unit(numbered, small_weights, tmp_path,
                                                                                monkeypatch):
    from tests.helpers import flaky

    monkeypatch.setattr("pipeline.inputs.retries.RETRY_BACKOFF_S", 0.01)
    _, folder = numbered
    flaky.arm(failing_opens=10_000)
    with pytest.raises(RunFailed, match="Connection reset by peer"):
        run_small(f"{flaky.PREFIX}{folder}", tmp_path / "out", small_weights, "--direct_running_mode=in_memory")
    flaky.arm()
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob("_featurize/units/*.json")), "a unit was committed with faults as data"


def test_a_model_that_cannot_load_fails_the_run_instead_of_making_error_rows(zoo_folder, small_weights, tmp_path,
                                                                             monkeypatch):
    from pipeline.model.handler import KerasBackboneHandler

    def broken(self):
        raise OSError("weights cache unreadable (injected)")

    monkeypatch.setattr(KerasBackboneHandler, "load_model", broken)
    with pytest.raises(RunFailed, match="weights cache unreadable"):
        run_small(zoo_folder, tmp_path / "out", small_weights, "--direct_running_mode=in_memory")
    assert not list((tmp_path / "out").glob("_featurize/units/*.json"))


def test_local_output_and_weights_become_absolute_so_workers_elsewhere_find_them(tmp_path, monkeypatch):
    from pipeline.job.config import RunConfig
    from pipeline.job.launch import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    config = with_absolute_paths(RunConfig(input="photos/", output="out/", weights="w.weights.h5"))
    assert config.output == str(tmp_path / "out") and config.weights == str(tmp_path / "w.weights.h5")
    assert config.input == "photos/"  # made absolute when it is listed (sources.resolve_input)
    remote = with_absolute_paths(RunConfig(input="gs://b/in", output="gs://b/out", weights="gs://b/w.h5"))
    assert (remote.output, remote.weights) == ("gs://b/out", "gs://b/w.h5")
    for named, normalised in (("imagenet", "imagenet"), ("none", None)):  # not paths: left as they are
        assert with_absolute_paths(RunConfig(input="in", output="gs://b/out", weights=named)).weights == normalised
