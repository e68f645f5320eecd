"""pipeline.store.index and `featurize index`: the matrix equals the store, the index finds the exact neighbours,
a store that changed since refuses its index, and the choices and refusals are said in one sentence."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.cli import main
from pipeline.store.index import (FAISS_FILE, INFO_FILE, MATRIX_FILE, ROWS_FILE, SQNORMS_FILE, StaleIndex, build_index,
                            choose_factory, index_path, parse_bytes)
from pipeline.store.readers import HDF5Reader, ParquetReader
from pipeline.store.search import Block, exact_search
from pipeline.job.writer import UnitWriter, finalize_store
from pipeline.store.feature_store import FeatureStore

DIM = 16


def clustered(rows, dim=DIM, seed=0):
    """Rows of a Gaussian mixture (40 clusters): neighbours worth finding, as real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((40, dim)).astype(np.float32)
    return centres[rng.integers(0, 40, rows)] + 0.3 * rng.standard_normal((rows, dim)).astype(np.float32)


def generated_store(out, vectors, fmt="parquet", units=3, first_unit=0):
    """A finished store holding `vectors` ({output: N x D}) written with featurize's own writers, and
    its manifest; `first_unit` > 0 adds units to an existing store, as a --resume would."""
    outputs = {name: matrix.shape[1] for name, matrix in vectors.items()}
    fingerprint = {"backbone": "generated", "outputs": outputs, "dtype": "float32"}
    rows = len(next(iter(vectors.values())))
    bounds = np.linspace(0, rows, units + 1).astype(int)
    for unit, (low, high) in enumerate(zip(bounds[:-1], bounds[1:]), first_unit):
        writer = UnitWriter(str(out), f"files-{unit:03d}", fmt, fingerprint)
        for i in range(low, high):
            key = f"u{unit}/img{i:05d}.jpg"
            writer.add_row({"key": key, "uri": f"/images/{key}", "width": 1, "height": 1,
                            **{name: matrix[i] for name, matrix in vectors.items()}})
        writer.commit({"layout": "files", "source": "", "inputs": int(high - low),
                       "keys": [f"u{unit}/img{i:05d}.jpg" for i in range(low, high)]})
    finalize_store(str(out), {"format": fmt, "fingerprint": fingerprint}, started_at=0.0)
    return FeatureStore.open(str(out))


def exact_top(store, queries, k, metric="cosine"):
    return exact_search((Block(s, b) for s, b in store.iter_embeddings()), queries, k, metric)


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """3,000 clustered rows: enough for an IVF of 32 lists."""
    return clustered(3000)


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
    assert written["fingerprint"]["backbone"] == "generated" and written["features"] == store.manifest["files"]["features"]
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


def test_a_lossy_index_is_reranked_to_exact_scores(tmp_path, big):
    store = generated_store(tmp_path, {"embedding": big})
    info = build_index(store, factory="IVF32,SQ8")
    assert info.factory == "IVF32,SQ8" and info.recall_at_10 >= 0.95
    queries = clustered(50, seed=9)
    truth, truth_scores = exact_top(store, queries, 10)
    result = FeatureStore.open(str(tmp_path)).search(queries, k=10)
    assert recall(result.indices, truth) >= 0.95
    same = result.indices == truth  # where the index found the true row, the score is the exact one
    np.testing.assert_allclose(result.scores[same], truth_scores[same], rtol=1e-4, atol=1e-5)


def test_l2_index_and_a_search_of_the_other_metric_scans_the_matrix_exactly(tmp_path, big):
    store = generated_store(tmp_path, {"embedding": big})
    build_index(store, metric="l2", factory="IVF32,Flat")
    store = FeatureStore.open(str(tmp_path))
    queries = clustered(20, seed=5)
    truth, truth_scores = exact_top(store, queries, 10, "l2")
    l2 = store.search(queries, k=10, metric="l2")
    assert recall(l2.indices, truth) >= 0.95
    np.testing.assert_allclose(l2.scores[l2.indices == truth], truth_scores[l2.indices == truth], rtol=1e-4)
    cosine_truth, _ = exact_top(store, queries, 10, "cosine")
    np.testing.assert_array_equal(store.search(queries, k=10, metric="cosine").indices, cosine_truth)


def test_a_small_store_gets_no_faiss_index_and_is_scanned_exactly(tmp_path):
    vectors = clustered(300)
    store = generated_store(tmp_path, {"embedding": vectors})
    info = build_index(store)
    assert info.factory == "Flat" and info.search_value is None
    assert not os.path.exists(os.path.join(index_path(str(tmp_path), "embedding"), FAISS_FILE))
    queries = clustered(5, seed=2)
    truth, _ = exact_top(store, queries, 7)
    np.testing.assert_array_equal(FeatureStore.open(str(tmp_path)).search(queries, k=7).indices, truth)


def test_a_store_that_changed_since_refuses_its_index_but_answers_exact_searches(tmp_path, capsys):
    store = generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(store)
    # A --resume adds a unit: more rows, one more feature file, a new manifest.
    generated_store(tmp_path, {"embedding": clustered(30, seed=4)}, units=1, first_unit=7)
    grown = FeatureStore.open(str(tmp_path))
    assert len(grown) == 330
    with pytest.raises(StaleIndex, match=r"built for another state of the store \(its row count and feature files "
                                         r"changed\); rebuild it with `featurize index"):
        grown.search(clustered(1, seed=3), k=5)
    exact = grown.search(grown.get("u7/img00029.jpg"), k=1, exact=True)
    assert exact.keys == [["u7/img00029.jpg"]]
    assert main(["search", str(tmp_path), "--query", "u7/img00029.jpg"]) == 2
    assert "built for another state of the store" in capsys.readouterr().err
    assert main(["search", str(tmp_path), "--query", "u7/img00029.jpg", "--k", "1", "--exact"]) == 0
    assert "u7/img00029.jpg" in capsys.readouterr().out.splitlines()[2]
    assert grown.keys[-1] == "u7/img00029.jpg"  # with a stale index, rows are read from the shards
    build_index(grown)
    assert FeatureStore.open(str(tmp_path)).search(grown.get("u7/img00029.jpg"), k=1).keys == [["u7/img00029.jpg"]]


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
    from pipeline.job.launch import clear_previous_output

    store = generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(store)
    (tmp_path / "notes.txt").write_text("mine")
    clear_previous_output(str(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["notes.txt"]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_an_indexed_store_answers_a_key_query_without_decoding_its_shards(tmp_path, big, fmt, monkeypatch, capsys):
    generated_store(tmp_path, {"embedding": big}, fmt)
    assert main(["index", str(tmp_path), "--factory", "IVF32,Flat"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path), "--query", "u2/img02999.jpg", "--k", "4"]) == 0
    from_index = capsys.readouterr().out
    assert from_index.splitlines()[2].split() == ["1", "1.000000", "u2/img02999.jpg", "/images/u2/img02999.jpg"]

    def no_shard_reads(*args, **kwargs):
        raise AssertionError("a shard was read")
    for reader in (ParquetReader, HDF5Reader):
        for method in ("metadata", "blocks", "row"):
            monkeypatch.setattr(reader, method, no_shard_reads)
    assert main(["search", str(tmp_path), "--query", "u2/img02999.jpg", "--k", "4"]) == 0
    assert capsys.readouterr().out == from_index
    store = FeatureStore.open(str(tmp_path))
    assert store.index_of("u0/img00000.jpg") == 0 and store.index_of("u2/img02999.jpg") == 2999
    with pytest.raises(KeyError, match="key 'nope' is not in the store"):
        store.index_of("nope")
    assert main(["search", str(tmp_path), "--query", "nope"]) == 2
    assert "query 'nope' is neither an image file nor a key of the store" in capsys.readouterr().err


def test_featurize_search_of_a_local_store_imports_neither_beam_nor_tensorflow(tmp_path, big):
    generated_store(tmp_path, {"embedding": big})
    build_index(FeatureStore.open(str(tmp_path)), factory="IVF32,Flat")
    script = ("import sys\nfrom pipeline.cli import main\n"
              f"assert main(['search', {str(tmp_path)!r}, '--query', 'u1/img01234.jpg', '--k', '2']) == 0\n"
              "print(sorted(m for m in ('apache_beam', 'tensorflow', 'keras', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].split()[2] == "u1/img01234.jpg" and lines[-1] == "[]"


def test_an_index_built_before_rows_arrow_is_refused_as_stale(tmp_path):
    store = generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(store)
    os.remove(os.path.join(index_path(str(tmp_path), "embedding"), ROWS_FILE))
    with pytest.raises(StaleIndex, match=r"\(its index format \(it has no rows.arrow\) changed\); rebuild it"):
        FeatureStore.open(str(tmp_path)).search(clustered(1, seed=3), k=5)
