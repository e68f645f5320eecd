"""pipeline.store.search: exact top-k over blocks equals brute force; the faiss path and the re-rank agree with it."""
import numpy as np
import pytest

from pipeline.store.search import Block, ann_search, as_queries, exact_search, rerank


def brute_force(matrix, queries, k, metric):
    if metric == "cosine":
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
            matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = np.linalg.norm(queries[:, None, :] - matrix[None], axis=2)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def blocks_of(matrix, rows, with_norms):
    for start in range(0, len(matrix), rows):
        block = matrix[start:start + rows]
        yield Block(start, block, np.sum(block ** 2, axis=1) if with_norms else None)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((1000, 24), dtype=np.float32), rng.standard_normal((7, 24), dtype=np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("rows, with_norms", [(64, False), (1000, True), (333, True), (5, False)])
def test_exact_search_over_blocks_equals_brute_force(data, metric, rows, with_norms):
    matrix, queries = data
    indices, scores = exact_search(blocks_of(matrix, rows, with_norms), queries, 10, metric)
    expected_indices, expected_scores = brute_force(matrix, queries, 10, metric)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_k_larger_than_the_rows_returns_every_row_ranked(data):
    matrix, queries = data
    indices, scores = exact_search(blocks_of(matrix[:6], 4, False), queries[:2], 50, "cosine")
    assert indices.shape == scores.shape == (2, 6)
    assert sorted(indices[0]) == list(range(6))
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_a_zero_vector_scores_zero_instead_of_nan():
    matrix = np.array([[0, 0, 0], [1, 0, 0]], np.float32)
    indices, scores = exact_search([Block(0, matrix)], np.array([[1, 0, 0]], np.float32), 2, "cosine")
    assert indices.tolist() == [[1, 0]] and scores.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ann_search_through_a_flat_faiss_index_is_exact(data, metric):
    import faiss

    matrix, queries = data
    index = faiss.IndexFlatIP(24) if metric == "cosine" else faiss.IndexFlatL2(24)
    index.add(matrix / np.linalg.norm(matrix, axis=1, keepdims=True) if metric == "cosine" else matrix)
    indices, scores = ann_search(index, queries, 10, metric)
    expected_indices, expected_scores = brute_force(matrix, queries, 10, metric)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_rerank_orders_a_shortlist_by_exact_scores(data, metric):
    matrix, queries = data
    sqnorms = np.sum(matrix ** 2, axis=1)
    expected_indices, expected_scores = brute_force(matrix, queries, 5, metric)
    # A shortlist holding the true top 5 among decoys, shuffled, with -1 padding as faiss leaves it.
    rng = np.random.default_rng(0)
    shortlist = np.stack([rng.permutation(np.concatenate([true, rng.choice(1000, 15)])) for true in expected_indices])
    shortlist = np.concatenate([shortlist, np.full((len(queries), 3), -1)], axis=1)
    indices, scores = rerank(matrix, sqnorms, shortlist, queries, 5, metric)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_queries_of_the_wrong_dimension_or_metric_are_refused_in_one_sentence():
    assert as_queries([1, 2, 3], 3).shape == (1, 3)
    with pytest.raises(ValueError, match=r"queries have shape \(1, 2\); this store's vectors have dimension 3"):
        as_queries([1, 2], 3)
    with pytest.raises(ValueError, match="metric 'dot' is not one of cosine, l2"):
        exact_search([], np.zeros((1, 3), np.float32), 3, "dot")
