"""Top-k search as pure functions: exact over blocks of vectors, approximate through a faiss index.

Scores are cosine similarity (higher is closer) or L2 distance (lower is closer). Nothing here
knows about stores or files: `FeatureStore.search` chooses the blocks (a store's shards or the
index's contiguous matrix) or the index, and these functions rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

METRICS = ("cosine", "l2")
_TINY = 1e-12  # a zero vector has no direction: it scores 0 against everything


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query: `indices` into the store's rows, `scores` (cosine similarity, higher is
    closer; or L2 distance, lower is closer) and the matching `keys`, best first. `tail_rows`: rows of
    units the index does not cover, scanned exactly; `from_tail` marks the results among them."""
    indices: np.ndarray  # (queries, k) int64
    scores: np.ndarray  # (queries, k) float32
    keys: list[list[str]]
    tail_rows: int = 0
    from_tail: np.ndarray | None = None  # (queries, k) bool; None without an index


@dataclass(frozen=True)
class Block:
    """Rows `start` .. `start + len(vectors)` of a store; `sqnorms` (squared L2 norms of the rows)
    when precomputed, so a scan does not compute them again."""
    start: int
    vectors: np.ndarray  # (rows, D) float32
    sqnorms: np.ndarray | None = None


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")


def as_queries(vectors: np.ndarray | Sequence[float], dim: int) -> np.ndarray:
    """One vector or a batch -> a (queries, dim) float32 matrix; a wrong dimension is refused."""
    queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries have shape {queries.shape}; this store's vectors have dimension {dim}")
    return queries


def normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _TINY)


def _block_scores(queries: np.ndarray, block: Block, metric: str) -> np.ndarray:
    """(queries, rows) scores of already-normalized (cosine) queries against one block."""
    sqnorms = block.sqnorms if block.sqnorms is not None else np.einsum("ij,ij->i", block.vectors, block.vectors)
    products = queries @ block.vectors.T
    if metric == "cosine":
        return products / np.maximum(np.sqrt(sqnorms), _TINY)[None, :]
    squared = np.sum(queries ** 2, axis=1)[:, None] - 2 * products + sqnorms[None, :]
    return np.sqrt(np.maximum(squared, 0))


def _sign(metric: str) -> float:
    return -1.0 if metric == "cosine" else 1.0  # rank ascending on sign * score


def exact_search(blocks: Iterable[Block], queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of `queries` over every block; memory O(block rows x (D + queries)).
    Returns (indices, scores), each (queries, min(k, rows)), best first."""
    check_metric(metric)
    if metric == "cosine":
        queries = normalize(queries)
    sign = _sign(metric)
    # Per query, the running top-k as sign-adjusted scores (lower is better) and row indices.
    best_keys = [np.zeros(0, np.float32) for _ in queries]
    best_rows = [np.zeros(0, np.int64) for _ in queries]
    for block in blocks:
        keys = sign * _block_scores(queries, block, metric).astype(np.float32, copy=False)
        for query, row_keys in enumerate(keys):
            if len(best_keys[query]) == k:
                # Only rows better than the current k-th can enter: one vectorised comparison
                # skips almost every row once the first blocks have set a good bar.
                candidates = np.flatnonzero(row_keys < best_keys[query].max())
            else:
                candidates = np.arange(len(row_keys))
            if len(candidates) > k:
                candidates = candidates[np.argpartition(row_keys[candidates], k - 1)[:k]]
            merged_keys = np.concatenate([best_keys[query], row_keys[candidates]])
            merged_rows = np.concatenate([best_rows[query], candidates + block.start])
            if len(merged_keys) > k:
                keep = np.argpartition(merged_keys, k - 1)[:k]
                merged_keys, merged_rows = merged_keys[keep], merged_rows[keep]
            best_keys[query], best_rows[query] = merged_keys, merged_rows
    count = min((len(rows) for rows in best_rows), default=0)
    indices = np.array([rows[:count] for rows in best_rows], np.int64).reshape(len(queries), count)
    scores = (sign * np.array([keys[:count] for keys in best_keys], np.float32)).reshape(len(queries), count)
    return _sorted(indices, scores, metric)


def _sorted(indices: np.ndarray, scores: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(_sign(metric) * scores, axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)


def merge_rankings(rankings: list[tuple[np.ndarray, np.ndarray]], k: int, metric: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several (indices, scores) rankings of the same queries over disjoint rows, best first."""
    indices = np.concatenate([found for found, _ in rankings], axis=1)
    scores = np.concatenate([scored for _, scored in rankings], axis=1)
    indices, scores = _sorted(indices, scores, metric)
    return indices[:, :k], scores[:, :k]


def rerank(matrix: np.ndarray, sqnorms: np.ndarray, candidates: np.ndarray, queries: np.ndarray, k: int,
           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of each query's candidate rows (-1: none), the best k kept. Turns a lossy index's
    shortlist into exact scores and order."""
    check_metric(metric)
    if metric == "cosine":
        queries = normalize(queries)
    sign = _sign(metric)
    out_index = np.full((len(queries), k), -1, np.int64)
    out_scores = np.full((len(queries), k), np.nan, np.float32)
    for row, (query, rows) in enumerate(zip(queries, candidates)):
        rows = np.unique(rows[rows >= 0])  # sorted: the memory map is read in order
        block = Block(0, np.asarray(matrix[rows], np.float32), np.asarray(sqnorms[rows]))
        scores = _block_scores(query[None, :], block, metric)[0].astype(np.float32)
        best = np.argsort(sign * scores, kind="stable")[:k]
        out_index[row, :len(best)] = rows[best]
        out_scores[row, :len(best)] = scores[best]
    return out_index, out_scores


def ann_search(index: Any, queries: np.ndarray, k: int, metric: str, *, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k through a faiss index built on normalized vectors with inner product (cosine) or on the
    raw vectors with L2. Returns (indices, scores) as `exact_search` does; -1 where the index found
    fewer than k rows."""
    check_metric(metric)
    import faiss

    if metric == "cosine":
        queries = normalize(queries)
    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = nprobe
    scores, indices = index.search(np.ascontiguousarray(queries, np.float32), k)
    if metric == "l2":
        scores = np.sqrt(np.maximum(scores, 0))  # faiss returns squared distances
    return indices.astype(np.int64), scores.astype(np.float32)
