"""A store that grows after `featurize index`: the index appends only the units it misses (quantizer kept),
a search meanwhile scans those units exactly and merges them in, an append killed before index.json leaves
the old index whole, and an index outgrown by its store asks for --rebuild."""
import json
import os

import faiss
import numpy as np
import pyarrow as pa
import pytest

from pipeline.cli import main
from pipeline.store import indexing
from pipeline.store.feature_store import FeatureStore
from pipeline.store.index import INFO_FILE, MATRIX_FILE, ROWS_FILE, SQNORMS_FILE, index_path
from pipeline.store.indexing import build_index, update_index
from tests.helpers.stores import clustered, exact_top, generated_store, grow_store, recall


def _centroids(folder, name):
    index = faiss.read_index(os.path.join(folder, name))
    ivf = faiss.extract_index_ivf(index)
    return index.ntotal, ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _index_matrix_is_the_stores(store, folder, rows):
    """vectors.npy, sqnorms.npy and rows.arrow hold the store's rows, in the index's order, as read from its shards."""
    keys = pa.ipc.open_file(os.path.join(folder, ROWS_FILE)).read_all()["key"].to_pylist()
    assert len(keys) == rows and sorted(keys) == sorted(store.reader.metadata()["key"].to_pylist())
    by_key = dict(zip(store.reader.metadata()["key"].to_pylist(), store.embeddings()))
    matrix = np.load(os.path.join(folder, MATRIX_FILE))
    np.testing.assert_array_equal(matrix, np.stack([by_key[key] for key in keys]))
    np.testing.assert_allclose(np.load(os.path.join(folder, SQNORMS_FILE)), np.sum(matrix ** 2, axis=1), rtol=1e-5)


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_featurize_index_on_a_grown_store_adds_only_the_new_units_and_keeps_the_quantizer(tmp_path, big, fmt, capsys):
    generated_store(tmp_path, {"embedding": big}, fmt, first_unit=1)
    info = build_index(FeatureStore.open(str(tmp_path)), factory="IVF32,Flat")
    folder = index_path(str(tmp_path), "embedding")
    _, centroids = _centroids(folder, info.faiss_file)
    grown = grow_store(tmp_path, fmt)  # files-000 sorts before the indexed units, files-009 after
    assert main(["index", str(tmp_path)]) == 0
    said = capsys.readouterr()
    assert ("added 60 rows of 2 new units to the index of 'embedding' (now 3,060 rows, IVF32,Flat; quantizer and "
            "nprobe kept") in said.out and said.err == ""
    written = json.loads(open(os.path.join(folder, INFO_FILE)).read())
    assert written["rows"] == 3060 and written["trained_rows"] == 3000 and written["search_value"] == info.search_value
    assert [unit["file"] for unit in written["units"]][3:] == [grown.manifest["files"]["features"][0],
                                                               grown.manifest["files"]["features"][-1]]
    assert [unit["rows"] for unit in written["units"]] == [1000, 1000, 1000, 30, 30]
    assert sorted(os.listdir(folder)) == sorted([INFO_FILE, written["faiss_file"], MATRIX_FILE, SQNORMS_FILE, ROWS_FILE])
    total, kept = _centroids(folder, written["faiss_file"])
    assert total == 3060
    np.testing.assert_array_equal(kept, centroids)  # appended, not retrained
    _index_matrix_is_the_stores(grown, folder, 3060)

    store = FeatureStore.open(str(tmp_path))
    assert store.rows.equals(store.reader.metadata())  # the store's order, whatever the index's
    queries = clustered(100, seed=9)
    truth, _ = exact_top(store, queries, 10)
    result = store.search(queries, k=10)
    assert result.tail_rows == 0 and recall(result.indices, truth) >= 0.95
    new_key = "u0/img00029.jpg"
    np.testing.assert_array_equal(store.get(new_key), store.reader.row("embedding", store.index_of(new_key)))
    assert store.search(store.get(new_key), k=1).keys == [[new_key]]
    assert main(["index", str(tmp_path)]) == 0
    assert "nothing to add to the index of 'embedding' (now 3,060 rows" in capsys.readouterr().out
    assert main(["index", str(tmp_path), "--rebuild"]) == 0
    said = capsys.readouterr().out
    assert "indexed 3,060 rows of 'embedding'" in said and "(built anew: --rebuild)" in said


def test_a_search_of_a_grown_store_scans_the_units_the_index_misses_and_merges_them(tmp_path, capsys):
    generated_store(tmp_path, {"embedding": clustered(300)}, first_unit=1)
    build_index(FeatureStore.open(str(tmp_path)))
    grown = grow_store(tmp_path)
    store = FeatureStore.open(str(tmp_path))
    assert store.rows.equals(store.reader.metadata()) and len(store.keys) == 360
    queries = clustered(30, seed=5)
    for metric in ("cosine", "l2"):
        truth, truth_scores = exact_top(grown, queries, 10, metric)
        result = store.search(queries, k=10, metric=metric)
        np.testing.assert_array_equal(result.indices, truth)
        np.testing.assert_allclose(result.scores, truth_scores, rtol=1e-5, atol=1e-6)
        assert result.tail_rows == 60
        tail = np.array([[key.startswith(("u0/", "u9/")) for key in row] for row in result.keys])
        np.testing.assert_array_equal(result.from_tail, tail)
    new_key = "u9/img00029.jpg"
    assert main(["search", str(tmp_path), "--query", new_key, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["1", "1.000000", new_key]
    tail_results = sum(line.split()[2].startswith(("u0/", "u9/")) for line in lines[2:5])
    assert lines[5] == (f"featurize: {tail_results} of these 3 come from the 60 rows the index does not cover yet, "
                        f"searched exactly; `featurize index {tmp_path}` adds them")
    assert main(["index", str(tmp_path)]) == 0  # a Flat index (no faiss) appends too
    assert "added 60 rows of 2 new units to the index of 'embedding' (now 360 rows, Flat; exact scans" in \
        capsys.readouterr().out
    _index_matrix_is_the_stores(grown, index_path(str(tmp_path), "embedding"), 360)
    appended = FeatureStore.open(str(tmp_path))
    assert appended.index().info.rows == 360 and appended.rows.equals(appended.reader.metadata())
    result = appended.search(queries, k=10)
    np.testing.assert_array_equal(result.indices, exact_top(grown, queries, 10)[0])
    assert result.tail_rows == 0 and not result.from_tail.any()


def test_a_new_key_is_found_through_a_lossy_index_at_once(tmp_path, big):
    generated_store(tmp_path, {"embedding": big}, first_unit=1)
    build_index(FeatureStore.open(str(tmp_path)), factory="IVF32,SQ8")
    grow_store(tmp_path)
    store = FeatureStore.open(str(tmp_path))
    for key in ("u0/img00000.jpg", "u9/img00017.jpg", "u1/img00500.jpg"):
        found = store.search(store.get(key), k=3)
        assert found.keys[0][0] == key and found.tail_rows == 60
        assert bool(found.from_tail[0][0]) == (not key.startswith("u1/"))


def test_an_append_killed_before_index_json_leaves_the_old_index_whole(tmp_path, big, monkeypatch):
    generated_store(tmp_path, {"embedding": big}, first_unit=1)
    before = build_index(FeatureStore.open(str(tmp_path)), factory="IVF32,Flat")
    folder = index_path(str(tmp_path), "embedding")
    grown = grow_store(tmp_path)

    def killed(folder, info):
        raise KeyboardInterrupt
    monkeypatch.setattr(indexing, "_write_info", killed)
    with pytest.raises(KeyboardInterrupt):
        update_index(FeatureStore.open(str(tmp_path)))
    monkeypatch.undo()
    # Every file but index.json went ahead: vectors.npy already counts the new rows, a new faiss file is there.
    assert np.load(os.path.join(folder, MATRIX_FILE), mmap_mode="r").shape == (3060, 16)
    assert json.loads(open(os.path.join(folder, INFO_FILE)).read())["rows"] == 3000
    store = FeatureStore.open(str(tmp_path))
    assert store.index().info == before and store.rows.equals(grown.reader.metadata())
    queries = clustered(50, seed=2)
    truth, _ = exact_top(grown, queries, 10)
    result = store.search(queries, k=10)
    assert result.tail_rows == 60 and recall(result.indices, truth) >= 0.95
    np.testing.assert_array_equal(store.search(queries, k=10, exact=True).indices, truth)
    update = update_index(FeatureStore.open(str(tmp_path)))
    assert not update.built and update.added_rows == 60 and update.info.rows == 3060
    _index_matrix_is_the_stores(grown, folder, 3060)
    assert faiss.read_index(os.path.join(folder, update.info.faiss_file)).ntotal == 3060


def test_an_index_outgrown_by_its_store_asks_for_rebuild(tmp_path, capsys):
    generated_store(tmp_path, {"embedding": clustered(600)}, units=2, first_unit=1)
    build_index(FeatureStore.open(str(tmp_path)), factory="IVF8,Flat")
    generated_store(tmp_path, {"embedding": clustered(1900, seed=3)}, units=1, first_unit=5)
    assert main(["index", str(tmp_path)]) == 0
    said = capsys.readouterr()
    assert "added 1,900 rows of 1 new units" in said.out
    assert said.err == (f"featurize: warning: the index's quantizer was trained on 600 rows and the index now holds "
                        f"2,500 (4.2x): its lists no longer fit the data and probes scan ever longer lists; rebuild it "
                        f"with `featurize index {tmp_path} --rebuild`\n")
    assert main(["index", str(tmp_path), "--rebuild"]) == 0
    assert "indexed 2,500 rows" in capsys.readouterr().out
    assert FeatureStore.open(str(tmp_path)).index().info.trained_rows == 2500


def test_another_metric_or_model_builds_the_index_anew(tmp_path, capsys):
    generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(FeatureStore.open(str(tmp_path)))
    assert main(["index", str(tmp_path), "--metric", "l2"]) == 0
    assert "built anew: the index ranks by cosine, not l2" in capsys.readouterr().out
    path = os.path.join(index_path(str(tmp_path), "embedding"), INFO_FILE)
    info = json.loads(open(path).read())
    open(path, "w").write(json.dumps(dict(info, fingerprint={**info["fingerprint"], "backbone": "other"})))
    assert main(["index", str(tmp_path)]) == 0
    assert "built anew: the index was built with another model" in capsys.readouterr().out
