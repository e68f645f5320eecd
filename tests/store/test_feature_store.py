"""FeatureStore over real runs: both formats agree, search is exact, readers see the same numbers, and
reading a store (`featurize inspect` included) imports neither Beam nor TensorFlow nor pandas."""
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pipeline.job.manifest import finalize_store
from pipeline.store.feature_store import FeatureStore, IncompleteStore
from tests.helpers.runs import TEST_MODEL, TEST_SIZE, featurize
from tests.helpers.units import FINGERPRINT, row, write_unit

INTERMEDIATE = "expanded_conv_project_bn"


def layer_dims():
    from pipeline.model import keras_models

    return dict(keras_models.list_layers(TEST_MODEL, (TEST_SIZE, TEST_SIZE))), keras_models.default_layer(TEST_MODEL)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, zoo_folder, small_weights):
    root = tmp_path_factory.mktemp("stores")
    featurize(zoo_folder, root / "parquet", small_weights)
    featurize(zoo_folder, root / "hdf5", small_weights, "--format", "hdf5")
    return {fmt: FeatureStore.open(str(root / fmt)) for fmt in ("parquet", "hdf5")}


def by_key(store):
    return dict(zip(store.keys, store.embeddings()))


def test_parquet_and_hdf5_hold_identical_keys_and_vectors(stores):
    parquet, hdf5 = by_key(stores["parquet"]), by_key(stores["hdf5"])
    assert sorted(parquet) == sorted(hdf5) and len(parquet) == len(stores["hdf5"]) == 19
    for key, vector in parquet.items():
        np.testing.assert_array_equal(vector, hdf5[key])
    assert stores["parquet"].fingerprint == stores["hdf5"].fingerprint


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_store_basics(stores, fmt):
    store = stores[fmt]
    matrix = store.embeddings()
    assert matrix.shape == (len(store), store.dim) == (19, 576) and matrix.dtype == np.float32
    key = store.keys[5]
    np.testing.assert_array_equal(store.get(key), matrix[5])
    streamed = np.concatenate([block for _, block in store.iter_embeddings(chunk_rows=4)])
    np.testing.assert_array_equal(streamed, matrix)
    with pytest.raises(KeyError, match="not in the store"):
        store.get("nope")


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_equals_brute_force_and_finds_itself(stores, fmt, metric):
    store = stores[fmt]
    matrix = store.embeddings()
    queries = matrix[[0, 7, 11]]
    result = store.search(queries, k=5, metric=metric, chunk_rows=4)  # several chunks to merge
    if metric == "cosine":
        normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normed.T
        order = np.argsort(-scores, axis=1)[:, :5]
    else:
        scores = np.linalg.norm(queries[:, None, :] - matrix[None], axis=2)
        order = np.argsort(scores, axis=1)[:, :5]
    np.testing.assert_array_equal(result.indices, order)
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, order, axis=1), rtol=1e-4, atol=1e-4)
    assert [row[0] for row in result.keys] == [store.keys[i] for i in (0, 7, 11)]
    if metric == "cosine":
        np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-5)


def test_incomplete_output_is_refused_unless_asked(stores, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stores["parquet"].root, copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(IncompleteStore, match="no manifest.json"):
        FeatureStore.open(str(copy))
    partial = FeatureStore.open(str(copy), allow_incomplete=True)
    assert sorted(partial.keys) == sorted(stores["parquet"].keys)


def test_hdf5_virtual_store_is_the_whole_matrix_for_plain_h5py(stores):
    store = stores["hdf5"]
    with h5py.File(f"{store.root}/features.h5", "r") as f:
        assert f["embedding"].is_virtual and f["embedding"].shape == (19, 576)
        np.testing.assert_array_equal(f["embedding"][:], store.embeddings())
        assert list(f["key"].asstr()[:]) == store.keys
        assert "featurize.fingerprint" in f.attrs


def written_store(out, fmt):
    """A finished store of 3 units (3, 2 and 1 rows) written with the project's writers, no model run;
    returns the feature files its manifest lists, relative to `out`."""
    for unit, rows in (("files-1", range(3)), ("files-2", range(3, 5)), ("files-3", range(5, 6))):
        write_unit(out, unit, rows, [], fmt)
    return finalize_store(str(out), {"format": fmt, "fingerprint": FINGERPRINT}, started_at=0.0)["files"]["features"]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_a_store_whose_listed_feature_files_are_gone_is_refused_at_open(tmp_path, fmt):
    features = written_store(tmp_path, fmt)
    assert FeatureStore.open(str(tmp_path)).keys == [f"k{i}" for i in range(6)]
    (tmp_path / features[2]).unlink()
    (tmp_path / features[1]).unlink()
    with pytest.raises(IncompleteStore, match=rf"missing 2 of the 3 feature files its manifest.json lists "
                                              rf"\(first: {re.escape(features[1])}\); restore them or re-create"):
        FeatureStore.open(str(tmp_path))


def test_why_a_missing_hdf5_shard_is_refused_plain_h5py_reads_it_as_zeros(tmp_path):
    features = written_store(tmp_path, "hdf5")
    (tmp_path / features[1]).unlink()
    # HDF5 fills the unmapped rows of the virtual dataset with the fill value, without an error.
    with h5py.File(tmp_path / "features.h5", "r") as f:
        assert list(f["key"].asstr()[:]) == ["k0", "k1", "k2", "", "", "k5"]
        embeddings = f["embedding"][:]
    np.testing.assert_array_equal(embeddings[3:5], np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(embeddings[[0, 1, 2, 5]], np.stack([row(i)["embedding"] for i in (0, 1, 2, 5)]))


def test_multi_layer_multi_pooling_in_one_pass_equals_single_runs(zoo_folder, small_weights, tmp_path):
    shapes, final = layer_dims()
    featurize(zoo_folder, tmp_path / "multi", small_weights, "--layers", f"{INTERMEDIATE},{final}",
              "--pooling", "avg,max,gem", "--gem-p", "2.5", "--format", "hdf5")
    featurize(zoo_folder, tmp_path / "single", small_weights, "--layers", INTERMEDIATE)
    multi = FeatureStore.open(str(tmp_path / "multi"))
    single = FeatureStore.open(str(tmp_path / "single"))
    assert set(multi.outputs) == {f"{layer}/{p}" for layer in (INTERMEDIATE, final) for p in ("avg", "max", "gem")}
    assert multi.outputs[f"{INTERMEDIATE}/avg"] == single.dim == shapes[INTERMEDIATE][-1]
    assert multi.outputs[f"{final}/gem"] == 576
    reference = dict(zip(single.keys, single.embeddings()))
    for key, vector in zip(multi.keys, multi.embeddings(f"{INTERMEDIATE}/avg")):
        np.testing.assert_allclose(vector, reference[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass output="):
        multi.embeddings()


def test_float16_and_l2_normalised_store(zoo_folder, small_weights, tmp_path):
    featurize(zoo_folder, tmp_path / "half", small_weights, "--dtype", "float16", "--l2-normalize")
    store = FeatureStore.open(str(tmp_path / "half"))
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pq.read_table(f"{tmp_path}/half/features")
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 576)
    np.testing.assert_allclose(np.linalg.norm(store.embeddings(), axis=1), 1.0, atol=2e-3)


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_columns_the_reader_does_not_know_are_ignored(tmp_path, fmt, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr("pipeline.job.writer.ROW_GROUP_BYTES", 100)  # several row groups per file: get() finds its group
    features = written_store(tmp_path, fmt)
    # What a store made with predictions holds beside the vectors (K = 2 classes per row).
    if fmt == "parquet":
        for path in features:
            table = pq.read_table(tmp_path / path)
            rows = table.num_rows
            table = (table.append_column("predicted_ids", pa.array([[1, 2]] * rows, pa.list_(pa.int32())))
                     .append_column("predicted_names", pa.array([["a", "b"]] * rows, pa.list_(pa.string())))
                     .append_column("predicted_scores", pa.array([[0.5, 0.25]] * rows, pa.list_(pa.float32()))))
            pq.write_table(table, tmp_path / path, row_group_size=2)
        assert pq.ParquetFile(tmp_path / features[0]).num_row_groups == 2
    else:
        with h5py.File(tmp_path / "features.h5", "r+") as f:
            f.create_dataset("predicted_ids", data=np.ones((6, 2), np.int32))
            f.create_dataset("predicted_scores", data=np.ones((6, 2), np.float32))
    store = FeatureStore.open(str(tmp_path))
    expected = np.stack([row(i)["embedding"] for i in range(6)])
    np.testing.assert_array_equal(store.embeddings(), expected)
    assert store.keys == [f"k{i}" for i in range(6)] and store.uris == [f"u{i}" for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(store.get(f"k{i}"), expected[i])
    assert store.search(expected[4], k=1, metric="l2").keys == [["k4"]]


READ_PATH_NEVER_LOADS = ("apache_beam", "tensorflow", "keras", "pandas")


def run_fresh(script):
    """Run `script` in a fresh interpreter; returns its stdout lines, the last being the heavy modules it loaded."""
    done = subprocess.run([sys.executable, "-c", f"import sys\n{script}\n"
                           f"print(sorted(m for m in {READ_PATH_NEVER_LOADS!r} if m in sys.modules))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_featurize_inspect_imports_no_beam_and_sizes_the_stores_files(stores, fmt):
    root = stores[fmt].root
    lines = run_fresh(f"from pipeline.cli import main\nassert main(['inspect', {root!r}]) == 0")
    assert lines[-1] == "[]", f"featurize inspect loaded {lines[-1]}"
    assert lines[0] == f"store      {root}  ({fmt}, complete)"
    table = lines[lines.index("files") + 3:-1]
    manifest = stores[fmt].manifest
    listed = [*manifest["files"]["features"], *(["features.h5"] if fmt == "hdf5" else []),
              *manifest["files"]["errors"], "manifest.json"]
    assert [line.split()[0] for line in table] == listed
    assert [int(line.split()[1]) for line in table] == [os.path.getsize(os.path.join(root, name)) for name in listed]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_reading_a_store_and_its_error_rows_imports_no_beam(stores, fmt):
    store = stores[fmt]
    lines = run_fresh(f"from pipeline.store.feature_store import FeatureStore\n"
                      f"store = FeatureStore.open({store.root!r})\n"
                      f"print(len(store.keys), store.embeddings().shape, store.rows.num_rows, store.errors().num_rows)")
    assert lines[-1] == "[]", f"reading a store loaded {lines[-1]}"
    errors = store.manifest["counts"]["errors"]
    assert lines[0] == f"19 (19, 576) 19 {errors}" and store.errors().num_rows == errors


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_first_row_is_row_zero_without_reading_every_row(stores, fmt):
    # What a finished run's "next:" hint quotes: the same row as rows[0], from one row group.
    store = stores[fmt]
    assert store.reader.first() == (store.rows["key"][0].as_py(), store.rows["uri"][0].as_py())
