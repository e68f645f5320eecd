"""A store's search index, read: the folder `featurize index` writes (pipeline.store.indexing) inside a
finished store, opened memory-mapped and searched (`StoreIndex`).

Layout, one folder per indexed output (`OUT/index/embedding/`, `OUT/index/LAYER/POOLING/`):

    vectors.npy    N x D float32 in row order (NumPy .npy, memory-mapped for exact scans)
    sqnorms.npy    N float32 squared L2 norms of those rows (cosine and L2 scans skip recomputing them)
    rows.arrow     every per-row column but the vectors (key, uri, ...; `FeatureStore.rows`), an
                   uncompressed Arrow IPC file: memory-mapped, so a search names its results and
                   finds a key's row without decoding 1M keys from Parquet
    index.faiss    the faiss index (absent for `Flat`: a small store is scanned exactly)
    index.json     written last: what was indexed (the store's fingerprint, row count and feature
                   files), the faiss factory string, metric, search parameter and measured recall

Parquet decodes fixed_size_list columns at ~1.3 s per 100M floats while a matrix product over
the same floats takes ~0.08 s: the .npy matrix is the representation search reads. An index
is refused (`StaleIndex`) once the store changed (a `--resume` added rows, another model wrote
it), so a search never returns rows of another store. A lossy index returns a shortlist that is
re-ranked exactly from the matrix, so scores always equal the exact ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline import files
from pipeline.store.schema import INDEX_DIR
from pipeline.store.search import Block, ann_search, exact_search, rerank

INFO_FILE = "index.json"
MATRIX_FILE = "vectors.npy"
ROWS_FILE = "rows.arrow"
SQNORMS_FILE = "sqnorms.npy"
FAISS_FILE = "index.faiss"
FLAT = "Flat"
SCAN_ROWS = 65_536  # rows per block of an exact scan (64 MiB at 256 dims): bounded memory, large BLAS calls
SHORTLIST = 4  # a lossy index shortlists SHORTLIST * k rows for the exact re-rank


class StaleIndex(ValueError):
    """The index was built for another state of the store."""


@dataclass(frozen=True)
class IndexInfo:
    """index.json: what the index was built from and how to search it."""
    output: str
    metric: str
    rows: int
    dim: int
    factory: str  # faiss index_factory string, or "Flat" (no faiss index: exact scans)
    search_parameter: str | None  # "nprobe" for IVF indexes
    search_value: int | None
    recall_at_10: float | None  # of TUNING_QUERIES store rows' 10 nearest other rows, at search_value
    fingerprint: dict[str, Any]
    features: list[str]  # the manifest's feature files: a resume that adds rows adds files
    build_seconds: float
    faiss_version: str | None


def index_path(root: str, output: str) -> str:
    """The folder of `output`'s index inside the store at `root`."""
    return os.path.join(root, INDEX_DIR, *output.split("/"))


def _is_lossy(factory: str) -> bool:
    return factory != FLAT and not factory.endswith(",Flat")


def search_index(index, matrix: np.ndarray, sqnorms: np.ndarray, queries: np.ndarray, k: int, metric: str,
                 factory: str, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k through a faiss index; a lossy one's shortlist is re-ranked exactly from the matrix."""
    if not _is_lossy(factory):
        return ann_search(index, queries, k, metric, nprobe=nprobe)
    shortlist, _ = ann_search(index, queries, SHORTLIST * k, metric, nprobe=nprobe)
    return rerank(matrix, sqnorms, shortlist, queries, k, metric)


def matrix_blocks(matrix: np.ndarray, sqnorms: np.ndarray, rows: int = SCAN_ROWS) -> Iterator[Block]:
    """The matrix as exact-scan blocks with their precomputed squared norms."""
    for start in range(0, len(matrix), rows):
        yield Block(start, matrix[start:start + rows], sqnorms[start:start + rows])


class StoreIndex:
    """An index folder opened for one store: the memory-mapped matrix and, unless Flat, faiss."""

    def __init__(self, folder: str, info: IndexInfo):
        self.folder = folder
        self.info = info
        self.matrix = np.load(os.path.join(folder, MATRIX_FILE), mmap_mode="r")
        self.sqnorms = np.load(os.path.join(folder, SQNORMS_FILE), mmap_mode="r")
        self._faiss = None
        self._rows: pa.Table | None = None

    @classmethod
    def open(cls, store, output: str) -> "StoreIndex | None":
        """The store's index of `output`, or None when there is none; StaleIndex when the store changed
        since it was built."""
        if not files.is_local(store.root) or store.manifest is None:
            return None
        folder = index_path(store.root, output)
        path = os.path.join(folder, INFO_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as handle:
            info = IndexInfo(**json.load(handle))
        changed = [what for what, ours, theirs in (
            ("row count", info.rows, len(store)),
            ("fingerprint", info.fingerprint, store.fingerprint.to_json()),
            ("feature files", info.features, store.manifest["files"]["features"])) if ours != theirs]
        if not os.path.exists(os.path.join(folder, ROWS_FILE)):  # built before rows.arrow was part of an index
            changed.append(f"index format (it has no {ROWS_FILE})")
        if changed:
            raise StaleIndex(f"the index in {folder!r} was built for another state of the store (its "
                             f"{' and '.join(changed)} changed); rebuild it with `featurize index {store.root}`, "
                             f"or search with exact=True (--exact)")
        return cls(folder, info)

    @property
    def rows(self) -> pa.Table:
        """rows.arrow, memory-mapped: nothing is read until a column is used."""
        if self._rows is None:
            import pyarrow.ipc as ipc

            self._rows = ipc.open_file(pa.memory_map(os.path.join(self.folder, ROWS_FILE))).read_all()
        return self._rows

    @property
    def faiss_index(self):
        if self._faiss is None and self.info.factory != FLAT:
            import faiss

            # Memory-mapped: opening a 1 GB index takes milliseconds and only probed lists are paged in.
            self._faiss = faiss.read_index(os.path.join(self.folder, FAISS_FILE), faiss.IO_FLAG_MMAP)
        return self._faiss

    def blocks(self):
        """The matrix as exact-scan blocks with precomputed norms."""
        return matrix_blocks(self.matrix, self.sqnorms)

    def search(self, queries: np.ndarray, k: int, metric: str, *, exact: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Through the faiss index when it was built for `metric` (and not `exact`); otherwise an exact
        scan of the matrix."""
        k = min(k, self.info.rows)
        if exact or self.info.factory == FLAT or metric != self.info.metric:
            return exact_search(self.blocks(), queries, k, metric)
        indices, scores = search_index(self.faiss_index, self.matrix, self.sqnorms, queries, k, metric,
                                        self.info.factory, self.info.search_value)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):  # the probed lists held fewer than k rows: those queries are answered exactly
            indices[short], scores[short] = exact_search(self.blocks(), queries[short], k, metric)
        return indices, scores
