"""`featurize index OUT`: build a finished store's contiguous float32 matrix and approximate-nearest-
neighbour index inside its folder (the layout, and reading it, are pipeline.store.index's).

Index choice (`choose_factory`, after autofaiss's heuristics): up to FLAT_ROWS rows no index
(exact scans are fast enough); above, an IVF with about 2*sqrt(N) lists whose codes are the
largest of Flat, SQ8 or PQ that fits the memory budget. A lossy index's shortlist is re-ranked
exactly at search time. `nprobe` is tuned at build time: the smallest power of two whose recall@10
of sampled rows' nearest *other* rows reaches the target (0.97, so that new queries stay above 0.95).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict

import numpy as np

from pipeline import files
from pipeline.store.index import (FAISS_FILE, FLAT, INFO_FILE, MATRIX_FILE, ROWS_FILE, SCAN_ROWS, SQNORMS_FILE,
                                  IndexInfo, index_path, matrix_blocks, search_index)
from pipeline.store.search import METRICS, exact_search, normalize

FLAT_ROWS = 50_000
RECALL_TARGET = 0.97  # on sampled rows; new queries land a little lower (bench/index_search.py)
TUNING_QUERIES = 256
_TRAIN_PER_LIST = 40  # faiss warns below 39 training points per list
_KMEANS_ITERATIONS = 10  # faiss's default is 25; fewer shorten the build, and the tuning measures the recall left


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
        found, _ = search_index(index, matrix, sqnorms, queries, 11, metric, factory, nprobe)
        recall = _recall_of_others(found, truth, picked)
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nlist, nprobe * 2)


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
