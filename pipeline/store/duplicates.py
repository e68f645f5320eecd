"""Near-duplicate groups: the connected components of a store's pairs of rows whose similarity reaches a
threshold (cosine similarity >= T, or L2 distance <= T), as pure functions over matrices.

Two ways to find the pairs. `exact_pairs`: blocked matrix products over a memory-mapped matrix, every pair
once (memory O(block^2 + block x D), time O(N^2 x D): minutes at 10^5 rows, hours at 10^6 on 2 cores).
`index_pairs`: a range search of every row through the store's IVF index at its tuned nprobe, the
candidates re-scored exactly (time ~ N x nprobe/nlist x N x D): a pair whose rows fall in lists the
other's probes do not reach is missed, and with lossy codes (SQ8, PQ) so is a pair whose coded similarity
falls below T while its exact one does not; no pair below T is ever reported. `components` joins the pairs
batch by batch (a vectorised union-find over one int64 per row), so memory stays bounded by a batch's pairs.
`FeatureStore.duplicates` chooses the way and names the rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa

from pipeline import files
from pipeline.store.search import check_metric

BLOCK_ROWS = 4096  # exact: a 4096 x 4096 float32 score block is 64 MiB
BATCH_ROWS = 16_384  # index: rows per range search
METADATA_KEY = b"featurize.duplicates"
DUPLICATES_FILE = "duplicates.parquet"  # `featurize duplicates OUT` writes it beside the store; inspect reads it
Pairs = tuple[np.ndarray, np.ndarray]  # (rows, rows): row i[n] and row j[n] are near-duplicates


@dataclass(frozen=True)
class DuplicateGroups:
    """The groups of two or more rows, as the Parquet file `featurize duplicates` writes: `table` has key,
    uri, group (numbered in the order of each group's first row), size (rows in the group) and first (the
    group's first row in the store's order: keep it, drop the others), sorted by group then row."""
    table: pa.Table
    threshold: float
    metric: str
    method: str  # "exact" or "index" (the IVF index's range search)
    rows: int  # rows compared: the store's

    @property
    def groups(self) -> int:
        return _count(self.table["group"])


def _count(group: pa.ChunkedArray) -> int:
    """Groups are numbered 0.. in the table's order: the last number + 1."""
    return int(group[-1].as_py()) + 1 if len(group) else 0


def check_threshold(threshold: float, metric: str) -> None:
    check_metric(metric)
    valid = -1 <= threshold <= 1 if metric == "cosine" else threshold >= 0
    if not valid:
        kind = "a cosine similarity; give a number from -1 to 1, e.g. 0.95" if metric == "cosine" else \
            "an L2 distance; give a number of 0 or more"
        raise ValueError(f"threshold {threshold} is not {kind}")


def _near(scores: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    return scores >= threshold if metric == "cosine" else scores <= threshold


def _scores(left: np.ndarray, right: np.ndarray, products: np.ndarray, metric: str) -> np.ndarray:
    """Cosine (rows already normalized: the products) or L2 distances from the products."""
    if metric == "cosine":
        return products
    squared = np.einsum("ij,ij->i", left, left)[:, None] - 2 * products + np.einsum("ij,ij->i", right, right)[None, :]
    return np.sqrt(np.maximum(squared, 0))


def exact_pairs(matrix: np.ndarray, threshold: float, metric: str, block_rows: int = BLOCK_ROWS) -> Iterator[Pairs]:
    """Every pair i < j of `matrix` (normalized rows for cosine) at or past the threshold, one block pair at
    a time."""
    rows = len(matrix)
    for first in range(0, rows, block_rows):
        left = np.asarray(matrix[first:first + block_rows], np.float32)
        for second in range(first, rows, block_rows):
            right = left if second == first else np.asarray(matrix[second:second + block_rows], np.float32)
            near = _near(_scores(left, right, left @ right.T, metric), threshold, metric)
            if second == first:
                near = np.triu(near, 1)
            i, j = np.nonzero(near)
            if len(i):
                yield i + first, j + second


def index_pairs(index: Any, matrix: np.ndarray, sqnorms: np.ndarray, threshold: float, metric: str,
                nprobe: int | None, batch_rows: int = BATCH_ROWS) -> Iterator[Pairs]:
    """The pairs a range search of every row of `matrix` through the faiss IVF `index` (built on `matrix`:
    normalized with inner product for cosine, raw with L2) finds, re-scored exactly; a pair may come twice."""
    import faiss

    from pipeline.store.search import normalize

    if nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = nprobe
    # faiss keeps inner products > radius and squared distances < radius: widened by one ulp for >= and <=.
    radius = np.nextafter(np.float32(threshold), np.float32(-2)) if metric == "cosine" else \
        np.nextafter(np.float32(threshold) ** 2, np.float32(np.inf))
    for first in range(0, len(matrix), batch_rows):
        block = np.asarray(matrix[first:first + batch_rows], np.float32)
        limits, _, found = index.range_search(np.ascontiguousarray(normalize(block) if metric == "cosine" else block),
                                              float(radius))
        i = np.repeat(np.arange(first, first + len(block)), np.diff(limits).astype(np.int64))
        other = i != found
        i, j = i[other], found[other].astype(np.int64)
        left, right = np.asarray(matrix[i], np.float32), np.asarray(matrix[j], np.float32)
        products = np.einsum("ij,ij->i", left, right)
        if metric == "cosine":
            scores = products / np.maximum(np.sqrt(sqnorms[i] * sqnorms[j]), 1e-12)
        else:
            scores = np.sqrt(np.maximum(sqnorms[i] - 2 * products + sqnorms[j], 0))
        near = _near(scores, threshold, metric)
        yield np.minimum(i, j)[near], np.maximum(i, j)[near]


def _roots(parent: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's root, and the rows pointed straight at it (path compression)."""
    roots = rows
    while True:
        up = parent[roots]
        if np.array_equal(up, roots):
            parent[rows] = roots
            return roots
        roots = up


def components(rows: int, pairs: Iterable[Pairs]) -> np.ndarray:
    """Each row's component, named by its smallest row: every union hooks the larger root under the smaller."""
    parent = np.arange(rows, dtype=np.int64)
    for i, j in pairs:
        while len(i):
            left, right = _roots(parent, i), _roots(parent, j)
            apart = left != right
            i, j, left, right = i[apart], j[apart], left[apart], right[apart]
            np.minimum.at(parent, np.maximum(left, right), np.minimum(left, right))
    return _roots(parent, np.arange(rows, dtype=np.int64))


def group_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, group, size) of every row in a component of two or more (`labels`: each row's component, named
    by any of its rows), by group (numbered in the order of each group's first row) then row."""
    sizes = np.bincount(labels, minlength=len(labels))
    rows = np.flatnonzero(sizes[labels] >= 2)
    names, first, inverse = np.unique(labels[rows], return_index=True, return_inverse=True)
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(first)] = np.arange(len(names))  # rows ascend: a group's first row is its first occurrence
    group = rank[inverse]
    order = np.lexsort((rows, group))
    return rows[order], group[order], sizes[labels[rows[order]]]


def groups_table(names: pa.Table, rows: np.ndarray, group: np.ndarray, size: np.ndarray) -> pa.Table:
    """key, uri, group, size, first of the grouped rows (`names`: the store's key and uri columns)."""
    first = np.ones(len(group), bool)
    first[1:] = group[1:] != group[:-1]
    named = names.select(["key", "uri"]).take(pa.array(rows))
    return named.append_column("group", pa.array(group.astype(np.int64))).append_column(
        "size", pa.array(size.astype(np.int64))).append_column("first", pa.array(first))


def write_groups(found: DuplicateGroups, path: str) -> None:
    """The groups as Parquet, with what made them in the schema's metadata (`read_summary`), on any filesystem
    (a store on S3 keeps its groups beside it)."""
    import pyarrow.parquet as pq

    made = {"threshold": found.threshold, "metric": found.metric, "method": found.method, "rows": found.rows}
    with files.open_write(path) as handle:
        pq.write_table(found.table.replace_schema_metadata({METADATA_KEY: json.dumps(made)}), handle)


@dataclass(frozen=True)
class GroupsSummary:
    """What `featurize inspect` says of a duplicates file."""
    groups: int
    keys: int
    threshold: float
    metric: str
    method: str
    rows: int  # the store's rows when the groups were made


def read_summary(path: str) -> GroupsSummary:
    import pyarrow.parquet as pq

    with files.open_read(path) as handle:
        parquet = pq.ParquetFile(handle)
        made = json.loads(parquet.schema_arrow.metadata[METADATA_KEY])
        group = parquet.read(columns=["group"])["group"]
    return GroupsSummary(_count(group), len(group), made["threshold"], made["metric"], made["method"], made["rows"])
