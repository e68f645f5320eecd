"""pipeline.store.index: an index answers with the exact neighbours' scores, a store that changed since refuses
its index (in one sentence) but answers exact searches, and an indexed store is searched without decoding a
shard or importing Beam."""
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.store.feature_store import FeatureStore
from pipeline.store.index import ROWS_FILE, StaleIndex, index_path
from pipeline.store.indexing import build_index
from pipeline.store.readers import HDF5Reader, ParquetReader
from tests.helpers.stores import clustered, exact_top, generated_store, recall


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


def test_an_index_of_another_model_or_naming_a_gone_unit_is_refused_but_answers_exact_searches(tmp_path, capsys):
    import json

    store = generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(store)
    path = os.path.join(index_path(str(tmp_path), "embedding"), "index.json")
    info = json.loads(open(path).read())
    other = dict(info, fingerprint=dict(info["fingerprint"], backbone="other"))
    open(path, "w").write(json.dumps(other))
    with pytest.raises(StaleIndex, match=r"was built with another model \(its fingerprint is not the store's\); "
                                         r"rebuild it with `featurize index .* --rebuild`"):
        FeatureStore.open(str(tmp_path)).search(clustered(1, seed=3), k=5)
    gone = dict(info, units=[*info["units"], {"file": "features/files-009.0.parquet", "rows": 5}])
    open(path, "w").write(json.dumps(gone))
    store = FeatureStore.open(str(tmp_path))
    with pytest.raises(StaleIndex, match=r"covers 1 unit files the store no longer lists \(first: "
                                         r"features/files-009.0.parquet\); rebuild it"):
        store.search(clustered(1, seed=3), k=5)
    assert store.search(store.get("u2/img00299.jpg"), k=1, exact=True).keys == [["u2/img00299.jpg"]]
    assert main(["search", str(tmp_path), "--query", "u2/img00299.jpg"]) == 2
    assert "covers 1 unit files the store no longer lists" in capsys.readouterr().err
    assert main(["search", str(tmp_path), "--query", "u2/img00299.jpg", "--k", "1", "--exact"]) == 0
    assert "u2/img00299.jpg" in capsys.readouterr().out.splitlines()[2]


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
    with pytest.raises(StaleIndex, match=r"is of an older layout \(it has no rows.arrow\); rebuild it"):
        FeatureStore.open(str(tmp_path)).search(clustered(1, seed=3), k=5)


def test_an_index_written_before_a_fingerprint_field_existed_still_serves_its_store(tmp_path):
    """index.json keeps the fingerprint as it was written; a field added since (resize_in) is its default."""
    import json

    store = generated_store(tmp_path, {"embedding": clustered(300)})
    build_index(store)
    path = os.path.join(index_path(str(tmp_path), "embedding"), "index.json")
    info = json.loads(open(path).read())
    assert info["fingerprint"].pop("resize_in") == "host"
    open(path, "w").write(json.dumps(info))
    store = FeatureStore.open(str(tmp_path))
    assert store.search(store.get("u2/img00299.jpg"), k=1).keys == [["u2/img00299.jpg"]]
    info["fingerprint"]["resize_in"] = "model"  # and one that differs is another model's
    open(path, "w").write(json.dumps(info))
    with pytest.raises(StaleIndex, match="was built with another model"):
        FeatureStore.open(str(tmp_path)).search(clustered(1, seed=3), k=5)
