"""The Parquet store is read without conversion by pyarrow, pandas, DuckDB and embedding-reader."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.store.feature_store import FeatureStore


@pytest.fixture(scope="module")
def store(tmp_path_factory, zoo_folder, small_weights):
    from tests.helpers.runs import featurize

    out = tmp_path_factory.mktemp("interop") / "out"
    featurize(zoo_folder, out, small_weights)
    return FeatureStore.open(str(out))


def reference(store):
    return dict(zip(store.keys, store.embeddings()))


def test_pyarrow_and_pandas_read_the_features_folder(store):
    import pandas as pd

    table = pq.read_table(f"{store.root}/features")
    assert table.column_names == ["key", "uri", "width", "height", "embedding"]
    frame = pd.read_parquet(f"{store.root}/features")
    matrix = np.stack(frame["embedding"].to_numpy())
    expected = reference(store)
    assert matrix.shape == (len(store), 576)
    for key, vector in zip(frame["key"], matrix):
        np.testing.assert_array_equal(vector, expected[key])
    errors = pd.read_parquet(f"{store.root}/errors")
    assert set(errors.columns) == {"key", "uri", "stage", "error_type", "message"} and len(errors) == 5


def test_duckdb_casts_to_fixed_array_and_runs_a_cosine_query(store):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is a test extra")
    key = store.keys[3]
    query = store.get(key).tolist()
    rows = duckdb.sql(f"""
        SELECT key, array_cosine_similarity(embedding::FLOAT[576], $query::FLOAT[576]) AS score
        FROM read_parquet('{store.root}/features/*.parquet')
        ORDER BY score DESC LIMIT 5""", params={"query": query}).fetchall()
    result = store.search(np.array(query), k=5)
    assert [r[0] for r in rows] == result.keys[0] and rows[0][0] == key
    np.testing.assert_allclose([r[1] for r in rows], result.scores[0], rtol=1e-5, atol=1e-5)


def test_embedding_reader_reads_the_features_folder(store):
    from embedding_reader import EmbeddingReader

    reader = EmbeddingReader(f"{store.root}/features", file_format="parquet", embedding_column="embedding",
                             meta_columns=["key"])
    assert reader.count == len(store) and reader.dimension == 576
    expected = reference(store)
    seen = 0
    for embeddings, meta in reader(batch_size=7, show_progress=False):
        for key, vector in zip(meta["key"], embeddings):
            np.testing.assert_array_equal(vector.astype(np.float32), expected[key])
            seen += 1
    assert seen == len(store)
