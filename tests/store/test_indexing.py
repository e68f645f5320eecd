"""pipeline.store.indexing and `featurize index`: the matrix equals the store, the index finds the exact
neighbours, and the choices and refusals are said in one sentence."""
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from pipeline.cli import main
from pipeline.store.feature_store import FeatureStore
from pipeline.store.index import FAISS_FILE, INFO_FILE, MATRIX_FILE, ROWS_FILE, SQNORMS_FILE, index_path
from pipeline.store.indexing import build_index, choose_factory, parse_bytes
from tests.helpers.stores import DIM, clustered, exact_top, generated_store, recall


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_index_folder_holds_the_store_matrix_and_finds_the_exact_neighbours(tmp_path, big, fmt):
    store = generated_store(tmp_path, {"embedding": big}, fmt)
    info = build_index(store, factory="IVF32,Flat")
    folder = index_path(str(tmp_path), "embedding")
    assert sorted(os.listdir(folder)) == sorted([INFO_FILE, FAISS_FILE, MATRIX_FILE, SQNORMS_FILE, ROWS_FILE])
    matrix = np.load(os.path.join(folder, MATRIX_FILE))
    np.testing.assert_array_equal(matrix, store.embeddings())
    rows = pa.ipc.open_file(os.path.join(folder, ROWS_FILE)).read_all()
    assert rows.column_names == ["key", "uri", "width", "height"] and rows.equals(store.reader.metadata())
    assert rows["key"].to_pylist()[1000] == "u1/img01000.jpg" and rows["uri"][1000].as_py() == "/images/u1/img01000.jpg"
    np.testing.assert_allclose(np.load(os.path.join(folder, SQNORMS_FILE)), np.sum(matrix ** 2, axis=1), rtol=1e-5)
    written = json.loads(open(os.path.join(folder, INFO_FILE)).read())
    assert written["rows"] == 3000 and written["dim"] == DIM and written["metric"] == "cosine"
    assert written["factory"] == "IVF32,Flat" and written["search_parameter"] == "nprobe"
    assert written["fingerprint"]["backbone"] == "generated" and [unit["file"] for unit in written["units"]] == store.manifest["files"]["features"]
    assert [unit["rows"] for unit in written["units"]] == [1000, 1000, 1000] and written["trained_rows"] == 3000
    assert info.recall_at_10 >= 0.95 and 1 <= info.search_value <= 32

    queries = clustered(200, seed=9)  # new points, not rows of the store
    truth, truth_scores = exact_top(store, queries, 10)
    result = FeatureStore.open(str(tmp_path)).search(queries, k=10)
    assert recall(result.indices, truth) >= 0.95
    # Whatever the index returns is scored exactly, like the exact search scores it.
    normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = np.einsum("qd,qkd->qk", queries / np.linalg.norm(queries, axis=1, keepdims=True), normed[result.indices])
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5)
    assert result.keys[0][0] == store.keys[result.indices[0][0]]
    exact = FeatureStore.open(str(tmp_path)).search(queries, k=10, exact=True)
    np.testing.assert_array_equal(exact.indices, truth)
    np.testing.assert_allclose(exact.scores, truth_scores, rtol=1e-5, atol=1e-6)


def test_a_small_store_gets_no_faiss_index_and_is_scanned_exactly(tmp_path):
    vectors = clustered(300)
    store = generated_store(tmp_path, {"embedding": vectors})
    info = build_index(store)
    assert info.factory == "Flat" and info.search_value is None
    assert not os.path.exists(os.path.join(index_path(str(tmp_path), "embedding"), FAISS_FILE))
    queries = clustered(5, seed=2)
    truth, _ = exact_top(store, queries, 7)
    np.testing.assert_array_equal(FeatureStore.open(str(tmp_path)).search(queries, k=7).indices, truth)


def test_several_outputs_are_indexed_one_at_a_time(tmp_path):
    vectors = {"block/avg": clustered(200), "block/max": clustered(200, dim=8, seed=1)}
    store = generated_store(tmp_path, vectors)
    with pytest.raises(ValueError, match="pass output= one of: block/avg, block/max"):
        build_index(store)
    build_index(store, "block/max")
    assert os.path.exists(os.path.join(tmp_path, "index", "block", "max", INFO_FILE))
    store = FeatureStore.open(str(tmp_path))
    assert store.index("block/avg") is None and store.index("block/max").info.dim == 8
    found = store.search(vectors["block/max"][:3], k=1, output="block/max")
    assert [row[0] for row in found.indices] == [0, 1, 2]


def test_an_unfinished_store_is_not_indexed(tmp_path):
    generated_store(tmp_path, {"embedding": clustered(20)})
    os.remove(tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="has no manifest.json; only a finished store can be indexed"):
        build_index(FeatureStore.open(str(tmp_path), allow_incomplete=True))


def test_factory_choice_follows_size_and_memory_budget():
    assert choose_factory(10_000, 256) == "Flat"
    assert choose_factory(500_000, 256) == "IVF1414,Flat"
    assert choose_factory(1_000_000, 256, memory_budget=parse_bytes("800MB")) == "IVF2000,SQ8"
    assert choose_factory(1_000_000, 256, memory_budget=parse_bytes("100MiB")) == "IVF2000,PQ64"
    with pytest.raises(ValueError, match=r"memory budget 1000 bytes cannot hold an index of 1000000 rows of "
                                         r"dimension 256 \(at least \d+ bytes\); give a larger budget"):
        choose_factory(1_000_000, 256, memory_budget=1000)


def test_memory_budgets_parse_or_are_refused_in_one_sentence():
    assert parse_bytes("2GiB") == 2 * 2 ** 30 and parse_bytes("1.5g") == 1_500_000_000
    assert parse_bytes("800MB") == 800_000_000 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="memory budget 'lots' is not a size; give bytes like 800MB, 2GiB"):
        parse_bytes("lots")


def test_featurize_index_and_search_commands(tmp_path, big, capsys):
    generated_store(tmp_path, {"embedding": big})
    assert main(["index", str(tmp_path), "--factory", "IVF32,Flat"]) == 0
    said = capsys.readouterr().out
    assert "indexed 3,000 rows of 'embedding' (16 dims, cosine) as IVF32,Flat, nprobe=" in said
    assert main(["search", str(tmp_path), "--query", "u1/img01500.jpg", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["1", "1.000000", "u1/img01500.jpg"] and len(lines) == 5
    assert main(["search", str(tmp_path), "--query", "u1/img01500.jpg", "--k", "3", "--exact"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["index", str(tmp_path), "--memory-budget", "lots"]) == 2
    assert "featurize: error: memory budget 'lots' is not a size" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--output", "nope"]) == 2
    assert "output 'nope' is not in the store; it has: embedding" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--factory", "HNSW32"]) == 2
    assert "factory 'HNSW32' is not an IVF index faiss can make for dimension 16" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--factory", "IVF-nonsense"]) == 2
    assert "factory 'IVF-nonsense' is not an IVF index" in capsys.readouterr().err


def test_overwrite_removes_the_index_with_the_rest_of_the_store(tmp_path):
    from pipeline.job.journal import clear_previous_output

    store = generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(store)
    (tmp_path / "notes.txt").write_text("mine")
    clear_previous_output(str(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["notes.txt"]
