"""`featurize index OUT`: a contiguous float32 matrix and an approximate-nearest-neighbour index of a
finished store, kept inside the store's folder.

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
it), so a search never returns rows of another store.

Index choice (`choose_factory`, after autofaiss's heuristics): up to FLAT_ROWS rows no index
(exact scans are fast enough); above, an IVF with about 2*sqrt(N) lists whose codes are the
largest of Flat, SQ8 or PQ that fits the memory budget. A lossy index returns a shortlist that is
re-ranked exactly from the matrix, so scores always equal the exact ones. `nprobe` is tuned at
build time: the smallest power of two whose recall@10 of sampled rows' nearest *other* rows
reaches the target (0.97, so that new queries stay above 0.95).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import files
from pipeline.store.schema import INDEX_DIR
from pipeline.store.search import Block, METRICS, ann_search, exact_search, normalize, rerank

INFO_FILE = "index.json"
MATRIX_FILE = "vectors.npy"
ROWS_FILE = "rows.arrow"
SQNORMS_FILE = "sqnorms.npy"
FAISS_FILE = "index.faiss"
FLAT = "Flat"
FLAT_ROWS = 50_000
SCAN_ROWS = 65_536  # rows per block of an exact scan (64 MiB at 256 dims): bounded memory, large BLAS calls
RECALL_TARGET = 0.97  # on sampled rows; new queries land a little lower (bench/index_search.py)
TUNING_QUERIES = 256
SHORTLIST = 4  # a lossy index shortlists SHORTLIST * k rows for the exact re-rank
_TRAIN_PER_LIST = 40  # faiss warns below 39 training points per list
_KMEANS_ITERATIONS = 10  # faiss's default is 25; fewer shorten the build, and the tuning measures the recall left


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
    return os.path.join(root, INDEX_DIR, *output.split("/"))


def parse_bytes(text: str) -> int:
    """`512MB`, `2GiB`, `1.5G`, `1000000` -> bytes; anything else is refused in one sentence."""
    units = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12,
             "ki": 2 ** 10, "mi": 2 ** 20, "gi": 2 ** 30, "ti": 2 ** 40}
    cleaned = text.strip().lower().removesuffix("b")
    number = cleaned.rstrip("kmgti")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise ValueError(f"memory budget {text!r} is not a size; give bytes like 800MB, 2GiB or 1500000000")
    return int(value * units[unit])


def choose_factory(rows: int, dim: int, memory_budget: int | None = None) -> str:
    """The faiss factory string for `rows` x `dim` vectors whose index must fit `memory_budget` bytes
    (None: no limit). The exact matrix is memory-mapped, so it is not counted."""
    if rows <= FLAT_ROWS:
        return FLAT
    lists = int(min(65_536, max(16, round(2 * math.sqrt(rows)))))
    centroids = lists * dim * 4
    per_row_id = 8
    for code, bytes_per_row in (("Flat", dim * 4), ("SQ8", dim)):
        if memory_budget is None or centroids + rows * (bytes_per_row + per_row_id) <= memory_budget:
            return f"IVF{lists},{code}"
    # PQ: m sub-quantizers of one byte; m must divide dim.
    for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1):
        if dim % m == 0 and centroids + rows * (m + per_row_id) <= memory_budget:
            return f"IVF{lists},PQ{m}"
    raise ValueError(f"memory budget {memory_budget} bytes cannot hold an index of {rows} rows of dimension {dim} "
                     f"(at least {centroids + rows * (1 + per_row_id)} bytes); give a larger budget")


def _is_lossy(factory: str) -> bool:
    return factory != FLAT and not factory.endswith(",Flat")


def _write_matrix(store, output: str, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """Stream the store's vectors into vectors.npy and their squared norms into sqnorms.npy."""
    rows, dim = len(store), store.outputs[output]
    matrix = np.lib.format.open_memmap(os.path.join(folder, MATRIX_FILE), mode="w+", dtype=np.float32,
                                       shape=(rows, dim))
    sqnorms = np.lib.format.open_memmap(os.path.join(folder, SQNORMS_FILE), mode="w+", dtype=np.float32,
                                        shape=(rows,))
    written = 0
    for start, block in store.iter_embeddings(output, SCAN_ROWS):
        matrix[start:start + len(block)] = block
        sqnorms[start:start + len(block)] = np.einsum("ij,ij->i", block, block)
        written = start + len(block)
    if written != rows:
        raise ValueError(f"the store's shards hold {written} rows but its manifest counts {rows}; "
                         f"the store is damaged, re-create it")
    matrix.flush()
    sqnorms.flush()
    return matrix, sqnorms


def _write_rows(store, folder: str) -> None:
    """The store's per-row metadata as an Arrow IPC file (no compression: it is memory-mapped)."""
    import pyarrow.ipc as ipc

    rows = store.reader.metadata()
    if rows.num_rows != len(store):
        raise ValueError(f"the store's shards hold {rows.num_rows} rows but its manifest counts {len(store)}; "
                         f"the store is damaged, re-create it")
    with ipc.new_file(os.path.join(folder, ROWS_FILE), rows.schema) as writer:
        writer.write_table(rows, max_chunksize=1 << 20)


def _prepared(block: np.ndarray, metric: str) -> np.ndarray:
    return np.ascontiguousarray(normalize(block) if metric == "cosine" else block, np.float32)


def _new_index(factory: str, dim: int, metric: str, seed: int = 0):
    """An empty, untrained faiss IVF index of `factory`; anything else is refused in one sentence."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2)
    except RuntimeError:  # faiss's parser: an unknown or malformed factory string
        index = None
    ivf = faiss.try_extract_index_ivf(index) if index is not None else None
    if ivf is None:
        raise ValueError(f"factory {factory!r} is not an IVF index faiss can make for dimension {dim}; give one like "
                         f"IVF1024,Flat, IVF1024,SQ8 or IVF1024,PQ16, or Flat for exact scans only")
    ivf.cp.niter = _KMEANS_ITERATIONS
    ivf.cp.seed = seed
    return index


def _train_and_add(index, matrix: np.ndarray, metric: str, seed: int = 0) -> None:
    import faiss

    rows = len(matrix)
    # PQ trains 256 centroids per sub-quantizer: it needs as many points as an IVF of 256 lists.
    sample = min(rows, max(faiss.extract_index_ivf(index).nlist, 256) * _TRAIN_PER_LIST)
    picked = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    index.train(_prepared(matrix[picked], metric))
    for start in range(0, rows, SCAN_ROWS):
        index.add(_prepared(matrix[start:start + SCAN_ROWS], metric))


def _recall_of_others(found: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> float:
    """recall@10 of each query row's 10 nearest *other* rows: a row always finds itself, a new
    query has no such luck, so the row itself is left out of both sides."""
    recalls = []
    for f, t, row in zip(found, truth, rows):
        others = [i for i in t if i != row][:10]
        recalls.append(len(set(f[f >= 0]) & set(others)) / len(others))
    return float(np.mean(recalls))


def _tune_nprobe(index, matrix: np.ndarray, sqnorms: np.ndarray, metric: str, factory: str,
                 target: float, seed: int = 0) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 (of sampled rows' other neighbours) reaches
    `target`."""
    import faiss

    rows = len(matrix)
    picked = np.sort(np.random.default_rng(seed + 1).choice(rows, min(rows, TUNING_QUERIES), replace=False))
    queries = np.asarray(matrix[picked], np.float32)
    truth, _ = exact_search(matrix_blocks(matrix, sqnorms), queries, 11, metric)
    nlist = faiss.extract_index_ivf(index).nlist
    nprobe = 1
    while True:
        found, _ = _search_index(index, matrix, sqnorms, queries, 11, metric, factory, nprobe)
        recall = _recall_of_others(found, truth, picked)
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nlist, nprobe * 2)


def _search_index(index, matrix: np.ndarray, sqnorms: np.ndarray, queries: np.ndarray, k: int, metric: str,
                  factory: str, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    if not _is_lossy(factory):
        return ann_search(index, queries, k, metric, nprobe=nprobe)
    shortlist, _ = ann_search(index, queries, SHORTLIST * k, metric, nprobe=nprobe)
    return rerank(matrix, sqnorms, shortlist, queries, k, metric)


def matrix_blocks(matrix: np.ndarray, sqnorms: np.ndarray, rows: int = SCAN_ROWS):
    for start in range(0, len(matrix), rows):
        yield Block(start, matrix[start:start + rows], sqnorms[start:start + rows])


def _remove(folder: str) -> None:
    for name in (INFO_FILE, FAISS_FILE, MATRIX_FILE, SQNORMS_FILE, ROWS_FILE):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)


def _local_root(store) -> str:
    if not files.is_local(store.root):
        raise ValueError(f"store {store.root!r} is not on a local disk; the index is memory-mapped, so copy "
                         f"the store to a local folder and index that")
    if store.manifest is None:
        raise ValueError(f"store {store.root!r} has no manifest.json; only a finished store can be indexed")
    return store.root


def build_index(store, output: str | None = None, *, metric: str = "cosine", memory_budget: int | None = None,
                factory: str | None = None, recall_target: float = RECALL_TARGET) -> IndexInfo:
    """Write the matrix and the index of `output` into the store's folder (replacing an older one)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    root = _local_root(store)
    output = store.output_name(output)
    folder = index_path(root, output)
    factory = factory or choose_factory(len(store), store.outputs[output], memory_budget)
    index = None if factory == FLAT else _new_index(factory, store.outputs[output], metric)
    os.makedirs(folder, exist_ok=True)
    _remove(folder)  # index.json goes first: a half-written folder is never taken for an index
    started = time.perf_counter()
    matrix, sqnorms = _write_matrix(store, output, folder)
    _write_rows(store, folder)
    parameter = value = recall = None
    faiss_version = None
    if index is not None:
        import faiss

        faiss_version = faiss.__version__
        _train_and_add(index, matrix, metric)
        parameter = "nprobe"
        value, recall = _tune_nprobe(index, matrix, sqnorms, metric, factory, recall_target)
        faiss.write_index(index, os.path.join(folder, FAISS_FILE))
    info = IndexInfo(output=output, metric=metric, rows=len(matrix), dim=int(matrix.shape[1]), factory=factory,
                     search_parameter=parameter, search_value=value, recall_at_10=recall,
                     fingerprint=store.fingerprint.to_json(), features=list(store.manifest["files"]["features"]),
                     build_seconds=round(time.perf_counter() - started, 3), faiss_version=faiss_version)
    temporary = os.path.join(folder, INFO_FILE + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(asdict(info), handle, indent=2)
    os.replace(temporary, os.path.join(folder, INFO_FILE))
    return info


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
        indices, scores = _search_index(self.faiss_index, self.matrix, self.sqnorms, queries, k, metric,
                                        self.info.factory, self.info.search_value)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):  # the probed lists held fewer than k rows: those queries are answered exactly
            indices[short], scores[short] = exact_search(self.blocks(), queries[short], k, metric)
        return indices, scores
