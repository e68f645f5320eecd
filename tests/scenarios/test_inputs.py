"""End to end: TFRecord shards, Parquet shards and path lists (local and http) give the very
vectors of the same images read from a folder, with the same counts, error rows and resume units."""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.job.config import ConfigError
from pipeline.job.launch import run
from tests.helpers.crash import error_keys, read_store, run_and_kill
from tests.helpers.runs import LOCAL, featurize_args
from tests.helpers.tfrecords import example, write_tfrecord

IN_MEMORY = "--direct_running_mode=in_memory"
SERVER_WAIT_S = 20


def folder_images(folder: pathlib.Path) -> list[tuple[str, bytes]]:
    return [(path.relative_to(folder).as_posix(), path.read_bytes()) for path in sorted(folder.rglob("*.jpg"))]


def write_tfrecords(root: pathlib.Path, images, shards=3, suffix=".tfrecord", **options):
    import tensorflow as tf

    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(images) // shards)
    for shard in range(shards):
        records = [example(**{"image/encoded": data, "image/filename": key.encode()})
                   for key, data in images[shard * per:(shard + 1) * per]]
        writer_options = tf.io.TFRecordOptions(**options) if options else None
        write_tfrecord(root / f"train-{shard:05d}{suffix}", records, writer_options)
    return f"{root}/train-*{suffix}"


def write_parquet(root: pathlib.Path, images, shards=3):
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(images) // shards)
    for shard in range(shards):
        part = images[shard * per:(shard + 1) * per]
        table = pa.table({"key": [key for key, _ in part], "jpg": pa.array([data for _, data in part], pa.binary()),
                          "caption": ["a photo"] * len(part)})
        pq.write_table(table, root / f"part-{shard:05d}.parquet", row_group_size=7)  # several row groups a shard
    return f"{root}/part-*.parquet"


def write_list(root: pathlib.Path, folder: pathlib.Path, images):
    root.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(folder, root)
    (root / "images.txt").write_text("# the numbered images\n" + "".join(f"{relative}/{key}\n" for key, _ in images))
    return str(root / "images.txt")


@pytest.fixture(scope="module")
def folder_reference(numbered_reference):
    """The numbered folder run in memory (made once per session, tests/conftest.py)."""
    out, vectors, manifest = numbered_reference("files")
    return vectors, manifest, error_keys(out)


def check_same_as_folder(out, manifest, folder_reference):
    vectors, reference_manifest, reference_errors = folder_reference
    got = read_store(out, "parquet")
    assert sorted(got) == sorted(vectors)
    for key, vector in vectors.items():
        np.testing.assert_array_equal(got[key], vector, err_msg=key)
    assert error_keys(out) == reference_errors == ["d1/img017.jpg"]
    for name in ("inputs", "rows", "errors", "errors_by_stage"):
        assert manifest["counts"][name] == reference_manifest["counts"][name], name


@pytest.mark.parametrize("kind", ["tfrecord", "tfrecord.gz", "parquet", "list"])
def test_each_input_format_gives_the_folder_s_vectors(kind, numbered, folder_reference, small_weights, tmp_path):
    _, folder = numbered
    images = folder_images(folder)
    source = {"tfrecord": lambda: write_tfrecords(tmp_path / "in", images),
              "tfrecord.gz": lambda: write_tfrecords(tmp_path / "in", images, suffix=".tfrecord.gz",
                                                     compression_type="GZIP"),
              "parquet": lambda: write_parquet(tmp_path / "in", images),
              "list": lambda: write_list(tmp_path / "in", folder, images)}[kind]()
    manifest = run(featurize_args(source, tmp_path / "out", small_weights, "parquet", IN_MEMORY))
    check_same_as_folder(tmp_path / "out", manifest, folder_reference)
    assert manifest["units"]["committed"] == (3 if kind != "list" else folder_reference[1]["units"]["committed"])


@pytest.fixture
def http_folder(numbered):
    """The numbered folder served by Python's http.server on a free localhost port; stopped by PID."""
    _, folder = numbered
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_WAIT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"http.server did not listen on port {port} within {SERVER_WAIT_S} s")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", folder
    server.kill()
    server.wait(timeout=10)


def test_a_csv_list_of_urls_is_downloaded_and_a_404_is_an_error_row(http_folder, folder_reference, small_weights,
                                                                     tmp_path):
    base, folder = http_folder
    images = folder_images(folder)
    lines = ["caption,url"] + [f"photo {i},{base}/{key}" for i, (key, _) in enumerate(images)]
    lines.append(f"gone,{base}/d9/missing.jpg")
    (tmp_path / "urls.csv").write_text("\n".join(lines) + "\n")
    manifest = run(featurize_args(tmp_path / "urls.csv", tmp_path / "out", small_weights, "parquet", IN_MEMORY))
    got = read_store(tmp_path / "out", "parquet")
    vectors = folder_reference[0]
    assert sorted(got) == sorted(vectors)
    for key, vector in vectors.items():
        np.testing.assert_array_equal(got[key], vector, err_msg=key)
    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    by_key = {row["key"]: row for row in errors}
    assert sorted(by_key) == ["d1/img017.jpg", "d9/missing.jpg"]
    assert by_key["d9/missing.jpg"]["stage"] == "read" and by_key["d9/missing.jpg"]["error_type"] == "HTTPError"
    assert "404" in by_key["d9/missing.jpg"]["message"]
    assert manifest["counts"]["inputs"] == len(images) + 1


def test_duplicate_record_keys_across_shards_are_error_rows(small_weights, numbered, tmp_path):
    _, folder = numbered
    (key0, data0), (key1, data1), (_, data2) = folder_images(folder)[:3]
    write_tfrecord(tmp_path / "a.tfrecord", [example(jpg=data0, key=b"same"), example(jpg=data1, key=b"only-a")])
    write_tfrecord(tmp_path / "b.tfrecord", [example(jpg=data2, key=b"same"), example(label=[1], key=b"no-image")])
    manifest = run(featurize_args(f"{tmp_path}/*.tfrecord", tmp_path / "out", small_weights, "parquet", IN_MEMORY))
    assert sorted(read_store(tmp_path / "out", "parquet")) == ["only-a", "same"]
    errors = {row["key"]: row for row in pq.read_table(tmp_path / "out" / "errors").to_pylist()}
    assert errors["same"]["error_type"] == "DuplicateKey" and errors["same"]["uri"] == f"{tmp_path}/b.tfrecord#0"
    assert errors["no-image"]["error_type"] == "MissingImage"
    assert manifest["counts"]["inputs"] == 4 and manifest["counts"]["rows"] == 2


def test_killed_parquet_run_resumes_and_new_shards_are_new_units(numbered, folder_reference, small_weights, tmp_path):
    _, folder = numbered
    images = folder_images(folder)
    write_parquet(tmp_path / "in", images, shards=6)
    first = f"{tmp_path}/in/part-0000{{0..4}}.parquet"
    out = tmp_path / "out"
    run_and_kill(featurize_args(first, out, small_weights, "parquet", *LOCAL), "unit-commit@2", tmp_path)
    assert not (out / "manifest.json").exists()
    # resumed in this process: worker processes resuming a killed run are tests/job/test_resume.py's
    resumed = run(featurize_args(first, out, small_weights, "parquet", IN_MEMORY, "--resume"))
    assert resumed["counts"]["reused"] > 0 and resumed["units"]["committed"] == 5
    # A sixth shard later: only it is processed.
    grown = run(featurize_args(f"{tmp_path}/in/part-*.parquet", out, small_weights, "parquet", IN_MEMORY, "--resume"))
    assert grown["units"]["processed"] == 1 and grown["counts"]["reused"] == resumed["counts"]["inputs"]
    check_same_as_folder(out, grown, folder_reference)


@pytest.mark.parametrize("flags, message", [
    (["--image-field", "photo"], r"image_field 'photo' is not a field of .*part-00000.parquet; its fields: key, jpg, caption"),
    (["--key-field", "id"], r"key_field 'id' is not a field of .*; its fields: key, jpg, caption"),
    (["--uri-column", "url"], r"uri_column 'url' applies to path lists only; input .* is Parquet shards"),
])
def test_field_mistakes_stop_before_any_work(flags, message, numbered, small_weights, tmp_path):
    _, folder = numbered
    source = write_parquet(tmp_path / "in", folder_images(folder)[:6], shards=2)
    with pytest.raises(ConfigError, match=message):
        run(featurize_args(source, tmp_path / "out", small_weights, "parquet", *flags))
    assert not (tmp_path / "out").exists()


def test_image_field_on_a_folder_is_refused(numbered, small_weights, tmp_path):
    _, folder = numbered
    with pytest.raises(ConfigError, match=r"image_field 'jpg' applies to TFRecord shards, Parquet shards and Arrow shards only"):
        run(featurize_args(folder, tmp_path / "out", small_weights, "parquet", "--image-field", "jpg"))


def test_a_shard_without_a_default_image_field_names_its_fields(small_weights, tmp_path):
    pq.write_table(pa.table({"id": ["a"], "pixels": pa.array([b"x"], pa.binary())}), tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"has none of the default image fields image/encoded, jpg.*its fields: "
                                          r"id, pixels; name the image's field with --image-field"):
        run(featurize_args(tmp_path / "p.parquet", tmp_path / "out", small_weights, "parquet"))


# --------------------------------------------------------------------------- Hugging Face datasets, TFDS


def check_vectors_by_position(out, manifest, folder_reference, keys: dict[str, str]):
    """Rows keyed SHARD:INDEX (`keys` maps each to the folder key of the image at that place) hold the
    folder's vectors; the folder's one undecodable image is the error row of its record."""
    vectors, reference_manifest, reference_errors = folder_reference
    got = read_store(out, "parquet")
    assert sorted(keys[key] for key in got) == sorted(vectors)
    for key, vector in got.items():
        np.testing.assert_array_equal(vector, vectors[keys[key]], err_msg=key)
    assert [keys[key] for key in error_keys(out)] == reference_errors
    for name in ("inputs", "rows", "errors", "errors_by_stage"):
        assert manifest["counts"][name] == reference_manifest["counts"][name], name


@pytest.mark.parametrize("kind", ["hub", "hub-paths", "save_to_disk"])
def test_hugging_face_datasets_give_the_folder_s_vectors(kind, numbered, folder_reference, small_weights, tmp_path,
                                                         monkeypatch):
    from tests.helpers.dataset_tools import hf_dataset, save_to_disk, write_hub_parquet

    _, folder = numbered
    images = folder_images(folder)
    data = tmp_path / "hub" / "data"
    if kind == "save_to_disk":  # a DatasetDict: a folder per split, keys below the saved folder
        source = save_to_disk(tmp_path / "saved", {"train": hf_dataset([d for _, d in images[:40]]),
                                                   "test": hf_dataset([d for _, d in images[40:]])})
        keys = {**{f"train/data-00000-of-00001.arrow:{i}": key for i, (key, _) in enumerate(images[:40])},
                **{f"test/data-00000-of-00001.arrow:{i}": key for i, (key, _) in enumerate(images[40:])}}
    else:  # the Hub's layout; `train-*` selects the split, SHARD:INDEX keeps the row order
        data.mkdir(parents=True)
        monkeypatch.chdir(data)  # path-only rows: paths relative to the shard's folder
        dataset = (hf_dataset([d for _, d in images]) if kind == "hub" else
                   hf_dataset([None] * len(images), [os.path.relpath(folder / key, data) for key, _ in images],
                              decode=False))
        source = write_hub_parquet(tmp_path / "hub", dataset, shards=3)
        keys = {f"train-{i // 20:05d}-of-00003.parquet:{i % 20}": key for i, (key, _) in enumerate(images)}
    manifest = run(featurize_args(source, tmp_path / "out", small_weights, "parquet", IN_MEMORY))
    check_vectors_by_position(tmp_path / "out", manifest, folder_reference, keys)
    if kind == "hub-paths":  # the bytes came from the files: each row's uri is the file
        uris = pq.read_table(tmp_path / "out" / "features", columns=["key", "uri"]).to_pylist()
        assert all(row["uri"] == str(folder / keys[row["key"]]) for row in uris)


def test_tfds_shards_give_the_folder_s_vectors(tfds_numbered, numbered, folder_reference, small_weights, tmp_path):
    version, images = tfds_numbered
    source = f"{version}/featurize_tiny-*.tfrecord-*"  # both splits; keys from image/filename
    manifest = run(featurize_args(source, tmp_path / "out", small_weights, "parquet", IN_MEMORY))
    check_same_as_folder(tmp_path / "out", manifest, folder_reference)
    assert manifest["units"]["committed"] == 2


def test_values_that_are_not_images_are_error_rows_and_the_run_finishes(numbered, small_weights, tmp_path):
    _, folder = numbered
    images = [data for _, data in folder_images(folder)[:3]]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": data, "path": None} for data in images] + [
        None, {"bytes": None, "path": None}, {"bytes": None, "path": "gone.jpg"}]
    pq.write_table(pa.table({"image": pa.array(cells, struct)}), tmp_path / "a.parquet")
    # a later shard with a wrong type: the launcher checks the first shard, each of these records is an error row
    pq.write_table(pa.table({"image": pa.array([1, 2], pa.int64())}), tmp_path / "b.parquet")
    manifest = run(featurize_args(f"{tmp_path}/*.parquet", tmp_path / "out", small_weights, "parquet", IN_MEMORY))
    assert sorted(read_store(tmp_path / "out", "parquet")) == ["a.parquet:0", "a.parquet:1", "a.parquet:2"]
    errors = {row["key"]: (row["stage"], row["error_type"])
              for row in pq.read_table(tmp_path / "out" / "errors").to_pylist()}
    assert errors == {"a.parquet:3": ("read", "MissingImage"), "a.parquet:4": ("read", "MissingImage"),
                      "a.parquet:5": ("read", "FileNotFoundError"), "b.parquet:0": ("read", "WrongImageType"),
                      "b.parquet:1": ("read", "WrongImageType")}
    counts = manifest["counts"]
    assert (counts["inputs"], counts["rows"], counts["errors"]) == (8, 3, 5)


def test_an_image_column_of_another_type_stops_the_run_before_any_work(small_weights, tmp_path):
    pq.write_table(pa.table({"image": pa.array([[0.5, 1.0]], pa.list_(pa.float32()))}), tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"^column 'image' of .*p\.parquet is list<element: float>, not image bytes "
                                          r"\(binary\), a path \(string\) or an image struct"):
        run(featurize_args(tmp_path / "p.parquet", tmp_path / "out", small_weights, "parquet"))
    assert not (tmp_path / "out").exists()
