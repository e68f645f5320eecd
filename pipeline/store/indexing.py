"""`featurize index OUT`: build a finished store's contiguous float32 matrix and approximate-nearest-
neighbour index inside its folder (the layout, and reading it, are pipeline.store.index's), or append to
it the units a `--resume` added since (`update_index`).

Index choice (`choose_factory`, after autofaiss's heuristics): up to FLAT_ROWS rows no index
(exact scans are fast enough); above, an IVF with about 2*sqrt(N) lists whose codes are the
largest of Flat, SQ8 or PQ that fits the memory budget. A lossy index's shortlist is re-ranked
exactly at search time. `nprobe` is tuned at build time: the smallest power of two whose recall@10
of sampled rows' nearest *other* rows reaches the target (0.97, so that new queries stay above 0.95).

An append keeps the trained quantizer and nprobe: the new rows are added to vectors.npy and sqnorms.npy in
place (NumPy's .npy header keeps room for the row count to grow), rows.arrow is rewritten (metadata only,
~50 bytes a row), the faiss index is read whole, given the new rows (`add_with_ids`, ids = their positions)
and written as a new file; index.json, naming that file, is written last, so an append killed before it
leaves the old index whole (its files' extra rows are never read, and the next append cuts them off).
Past GROWTH_LIMIT times the rows it was trained on, the lists no longer fit the data: the update says so.
"""
from __future__ import annotations

import glob
import json
import math
import os
import time
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from pipeline import files
from pipeline.store.index import (FAISS_FILE, FLAT, INFO_FILE, MATRIX_FILE, ROWS_FILE, SCAN_ROWS, SQNORMS_FILE,
                                  IndexedUnit, IndexInfo, StaleIndex, foreign, index_path, matrix_blocks, read_info,
                                  search_index, store_files)
from pipeline.store.readers import FilesReader
from pipeline.store.search import METRICS, exact_search, normalize

FLAT_ROWS = 50_000
RECALL_TARGET = 0.97  # on sampled rows; new queries land a little lower (bench/index_search.py)
TUNING_QUERIES = 256
_TRAIN_PER_LIST = 40  # faiss warns below 39 training points per list
_KMEANS_ITERATIONS = 10  # faiss's default is 25; fewer shorten the build, and the tuning measures the recall left
GROWTH_LIMIT = 4  # an IVF's lists were cut for the rows it was trained on; past 4x them an append asks for a rebuild


@dataclass(frozen=True)
class IndexUpdate:
    """What `update_index` did: built the index (trained from scratch) or appended the units it missed."""
    info: IndexInfo
    built: bool
    reason: str | None  # why an index that was there was built again ("--rebuild", another model, ...)
    added_rows: int  # appended rows (all of them when built)
    added_units: int
    seconds: float
    advice: str | None  # the sentence that asks for --rebuild, when the store outgrew the index


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


def _npy_for_append(path: str, rows: int, row_shape: tuple[int, ...]) -> tuple[BinaryIO, tuple[int, int], int]:
    """`path` (an empty float32 .npy when missing) opened to append after its first `rows` rows (rows past
    them, left by an append killed before its commit, are cut off): (handle, format version, data offset)."""
    if not os.path.exists(path):
        np.save(path, np.zeros((0, *row_shape), np.float32))
    handle = open(path, "r+b")
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    read_header(handle)
    offset = handle.tell()
    handle.truncate(offset + rows * int(np.prod(row_shape, dtype=np.int64)) * 4)
    handle.seek(0, os.SEEK_END)
    return handle, version, offset


def _npy_set_rows(handle: BinaryIO, version: tuple[int, int], offset: int, shape: tuple[int, ...]) -> None:
    """Rewrite the header for `shape`: NumPy pads it so that the row count can grow in place."""
    handle.seek(0)
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0)(handle, header)
    if handle.tell() != offset:
        raise ValueError(f"the header of {handle.name!r} cannot grow in place; rebuild the index with --rebuild")


def _append_matrix(folder: str, rows: int, dim: int, blocks: Iterator[tuple[int, np.ndarray]]) -> int:
    """Append the blocks' vectors to vectors.npy and their squared norms to sqnorms.npy, after the first
    `rows` rows; returns the rows now counted."""
    matrix, matrix_version, matrix_offset = _npy_for_append(os.path.join(folder, MATRIX_FILE), rows, (dim,))
    norms, norms_version, norms_offset = _npy_for_append(os.path.join(folder, SQNORMS_FILE), rows, ())
    with matrix, norms:
        total = rows
        for _, block in blocks:
            block = np.ascontiguousarray(block, np.float32)
            matrix.write(block.tobytes())
            norms.write(np.einsum("ij,ij->i", block, block).astype(np.float32).tobytes())
            total += len(block)
        _npy_set_rows(matrix, matrix_version, matrix_offset, (total, dim))
        _npy_set_rows(norms, norms_version, norms_offset, (total,))
    return total


def _append_rows(folder: str, rows: int, added: pa.Table) -> None:
    """rows.arrow rewritten as its first `rows` rows and then `added` (temp + rename: readers keep the old
    file mapped)."""
    import pyarrow.ipc as ipc

    path = os.path.join(folder, ROWS_FILE)
    tables = [added.replace_schema_metadata(None)]
    if rows:
        kept = ipc.open_file(pa.memory_map(path)).read_all().slice(0, rows)
        tables = [kept, tables[0].select(kept.column_names).cast(kept.schema)]
    with ipc.new_file(path + ".tmp", tables[-1].schema) as writer:
        for table in tables:
            writer.write_table(table, max_chunksize=1 << 20)
    os.replace(path + ".tmp", path)


def _counted(rows: int, expected: int) -> None:
    if rows != expected:
        raise ValueError(f"the store's shards hold {rows} rows but its manifest counts {expected}; "
                         f"the store is damaged, re-create it")


def _write_info(folder: str, info: IndexInfo) -> None:
    """index.json, temp + rename: the commit point of a build or an append."""
    temporary = os.path.join(folder, INFO_FILE + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(info.to_json(), handle, indent=2)
    os.replace(temporary, os.path.join(folder, INFO_FILE))


def _load_matrix(folder: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.load(os.path.join(folder, MATRIX_FILE), mmap_mode="r")[:rows],
            np.load(os.path.join(folder, SQNORMS_FILE), mmap_mode="r")[:rows])


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


def _train(index, matrix: np.ndarray, metric: str, seed: int = 0) -> None:
    import faiss

    rows = len(matrix)
    # PQ trains 256 centroids per sub-quantizer: it needs as many points as an IVF of 256 lists.
    sample = min(rows, max(faiss.extract_index_ivf(index).nlist, 256) * _TRAIN_PER_LIST)
    picked = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    index.train(_prepared(matrix[picked], metric))


def _add(index, matrix: np.ndarray, metric: str, first: int) -> None:
    """Add the matrix's rows from `first` on, each with its position as faiss id."""
    for start in range(first, len(matrix), SCAN_ROWS):
        block = _prepared(matrix[start:start + SCAN_ROWS], metric)
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))


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


def _remove_faiss(folder: str, keep: str | None = None) -> None:
    """Every faiss file in `folder` but `keep`: those of earlier appends, or of an append killed before its commit."""
    for path in glob.glob(os.path.join(folder, "index*.faiss")):
        if os.path.basename(path) != keep:
            os.remove(path)


def _remove(folder: str) -> None:
    for name in (INFO_FILE, MATRIX_FILE, SQNORMS_FILE, ROWS_FILE):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    _remove_faiss(folder)


def _local_root(store) -> str:
    if not files.is_local(store.root):
        raise ValueError(f"store {store.root!r} is not on a local disk; the index is memory-mapped, so copy "
                         f"the store to a local folder and index that")
    if store.manifest is None:
        raise ValueError(f"store {store.root!r} has no manifest.json; only a finished store can be indexed")
    return store.root


def _store_reader(store, names: list[str]) -> FilesReader:
    return FilesReader(store.format, [files.join(store.root, name) for name in names], store.outputs)


def build_index(store, output: str | None = None, *, metric: str = "cosine", memory_budget: int | None = None,
                factory: str | None = None, recall_target: float = RECALL_TARGET) -> IndexInfo:
    """Write the matrix and the index of `output` into the store's folder (replacing an older one)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    root = _local_root(store)
    output = store.output_name(output)
    folder = index_path(root, output)
    names = store_files(store)
    reader = _store_reader(store, names)
    counts = reader.rows()
    _counted(sum(counts), len(store))
    dim = store.outputs[output]
    factory = factory or choose_factory(len(store), dim, memory_budget)
    index = None if factory == FLAT else _new_index(factory, dim, metric)
    os.makedirs(folder, exist_ok=True)
    _remove(folder)  # index.json goes first: a half-written folder is never taken for an index
    started = time.perf_counter()
    rows = _append_matrix(folder, 0, dim, reader.blocks(output, SCAN_ROWS))
    _counted(rows, len(store))
    _append_rows(folder, 0, reader.metadata())
    matrix, sqnorms = _load_matrix(folder, rows)
    parameter = value = recall = faiss_version = faiss_file = None
    if index is not None:
        import faiss

        faiss_version, faiss_file = faiss.__version__, FAISS_FILE
        _train(index, matrix, metric)
        _add(index, matrix, metric, 0)
        parameter = "nprobe"
        value, recall = _tune_nprobe(index, matrix, sqnorms, metric, factory, recall_target)
        faiss.write_index(index, os.path.join(folder, FAISS_FILE))
    info = IndexInfo(output=output, metric=metric, rows=rows, dim=dim, factory=factory,
                     search_parameter=parameter, search_value=value, recall_at_10=recall,
                     fingerprint=store.fingerprint.to_json(),
                     units=tuple(IndexedUnit(name, count) for name, count in zip(names, counts)),
                     trained_rows=rows, faiss_file=faiss_file,
                     build_seconds=round(time.perf_counter() - started, 3), faiss_version=faiss_version)
    _write_info(folder, info)
    return info


def append_index(store, info: IndexInfo) -> tuple[IndexInfo, int]:
    """Add the rows of the units `info` does not cover to its index (quantizer and nprobe kept); returns the
    new info and the units added. index.json is written last."""
    root = _local_root(store)
    folder = index_path(root, info.output)
    covered = {unit.file for unit in info.units}
    names = [name for name in store_files(store) if name not in covered]
    if not names:
        return info, 0
    reader = _store_reader(store, names)
    counts = reader.rows()
    rows = _append_matrix(folder, info.rows, info.dim, reader.blocks(info.output, SCAN_ROWS))
    _counted(rows - info.rows, sum(counts))
    _append_rows(folder, info.rows, reader.metadata())
    faiss_file = info.faiss_file
    if info.factory != FLAT:
        import faiss

        index = faiss.read_index(os.path.join(folder, info.faiss_file))  # whole, not mapped: it grows
        _add(index, _load_matrix(folder, rows)[0], info.metric, info.rows)
        faiss_file = f"index.{rows}.faiss"  # a new name: the old index.json keeps naming a whole index
        faiss.write_index(index, os.path.join(folder, faiss_file))
    grown = replace(info, rows=rows, faiss_file=faiss_file,
                    units=info.units + tuple(IndexedUnit(name, count) for name, count in zip(names, counts)))
    _write_info(folder, grown)
    _remove_faiss(folder, keep=faiss_file)
    return grown, len(names)


def rebuild_advice(info: IndexInfo, root: str) -> str | None:
    """The sentence asking for --rebuild once the store outgrew what the index was built for, else None."""
    rebuild = f"rebuild it with `featurize index {root} --rebuild`"
    if info.factory == FLAT and choose_factory(info.rows, info.dim) != FLAT:
        return (f"the index is a Flat scan of {info.rows:,} rows, past the {FLAT_ROWS:,} where an IVF index answers "
                f"faster; {rebuild}")
    if info.factory != FLAT and info.rows > GROWTH_LIMIT * info.trained_rows:
        return (f"the index's quantizer was trained on {info.trained_rows:,} rows and the index now holds "
                f"{info.rows:,} ({info.rows / info.trained_rows:.1f}x): its lists no longer fit the data and probes "
                f"scan ever longer lists; {rebuild}")
    return None


def _rebuild_reason(store, info: IndexInfo | None, metric: str | None, factory: str | None,
                    memory_budget: int | None, rebuild: bool) -> str | None:
    """Why an existing index cannot be appended to (None: it can)."""
    if rebuild:
        return "--rebuild"
    why = foreign(store, info)
    if why:
        return f"the index {why}"
    if metric is not None and metric != info.metric:
        return f"the index ranks by {info.metric}, not {metric}"
    wanted = factory or (choose_factory(info.trained_rows, info.dim, memory_budget) if memory_budget else None)
    if wanted is not None and wanted != info.factory:
        return f"the index is {info.factory}, not {wanted}"
    return None


def update_index(store, output: str | None = None, *, metric: str | None = None, memory_budget: int | None = None,
                 factory: str | None = None, rebuild: bool = False, recall_target: float = RECALL_TARGET
                 ) -> IndexUpdate:
    """`featurize index`: append the units a current index misses, or build it (none yet, `rebuild`, another
    model, a unit file gone, another metric or factory asked for)."""
    root = _local_root(store)
    output = store.output_name(output)
    started = time.perf_counter()
    try:
        info = read_info(root, output)
    except StaleIndex:
        info, reason = None, "the index is of an older layout"
    else:
        reason = None if info is None else _rebuild_reason(store, info, metric, factory, memory_budget, rebuild)
    if info is None or reason:
        built = build_index(store, output, metric=metric or "cosine", memory_budget=memory_budget, factory=factory,
                            recall_target=recall_target)
        return IndexUpdate(built, True, reason, built.rows, len(built.units), round(time.perf_counter() - started, 3),
                           None)
    grown, units = append_index(store, info)
    return IndexUpdate(grown, False, None, grown.rows - info.rows, units, round(time.perf_counter() - started, 3),
                       rebuild_advice(grown, root))
