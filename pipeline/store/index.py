"""A store's search index, read: the folder `featurize index` writes (pipeline.store.indexing) inside a
finished store, opened memory-mapped and searched (`StoreIndex`).

Layout, one folder per indexed output (`OUT/index/embedding/`, `OUT/index/LAYER/POOLING/`):

    vectors.npy    N x D float32 in the index's row order (NumPy .npy, memory-mapped for exact scans)
    sqnorms.npy    N float32 squared L2 norms of those rows (cosine and L2 scans skip recomputing them)
    rows.arrow     every per-row column but the vectors (key, uri, ...; `FeatureStore.rows`), an
                   uncompressed Arrow IPC file: memory-mapped, so a search names its results and
                   finds a key's row without decoding 1M keys from Parquet
    index.faiss    the faiss index, its ids the rows above (absent for `Flat`: a small store is scanned
                   exactly); an append writes index.N.faiss, named in index.json
    index.json     written last (the commit point): the store's fingerprint, the units covered (feature file
                   and rows, in the index's row order: as built, then as appended), the faiss factory string
                   and file, metric, search parameter and measured recall

Parquet decodes fixed_size_list columns at ~1.3 s per 100M floats while a matrix product over
the same floats takes ~0.08 s: the .npy matrix is the representation search reads. The index's row
order is its units' order; `Coverage` maps it to the store's (units sorted by name, so a unit added by
`--resume` may sit between indexed ones). An index of the same fingerprint that misses units (a
`--resume` added them) is used, and the units it misses (the tail) are scanned exactly and merged into
its ranking; another fingerprint, or a unit file the index names that the store no longer lists, is
refused (`StaleIndex`), so a search never returns rows of another store. The files may hold more rows
than index.json counts (an append killed before its commit): only the counted ones are read. A lossy
index returns a shortlist that is re-ranked exactly from the matrix, so scores always equal the exact ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline import files
from pipeline.store.fingerprint import Fingerprint
from pipeline.store.readers import FilesReader
from pipeline.store.schema import INDEX_DIR
from pipeline.store.search import Block, ann_search, exact_search, merge_rankings, rerank

INFO_FILE = "index.json"
MATRIX_FILE = "vectors.npy"
ROWS_FILE = "rows.arrow"
SQNORMS_FILE = "sqnorms.npy"
FAISS_FILE = "index.faiss"
FLAT = "Flat"
SCAN_ROWS = 65_536  # rows per block of an exact scan (64 MiB at 256 dims): bounded memory, large BLAS calls
SHORTLIST = 4  # a lossy index shortlists SHORTLIST * k rows for the exact re-rank


class StaleIndex(ValueError):
    """The index cannot serve the store: another model built it, it names a unit file the store no longer
    lists, or it is of an older layout."""


@dataclass(frozen=True)
class IndexedUnit:
    """One unit the index covers: its feature file, as the manifest names it, and its rows."""
    file: str
    rows: int


@dataclass(frozen=True)
class IndexInfo:
    """index.json: what the index covers and how to search it."""
    output: str
    metric: str
    rows: int  # the sum of the units' rows
    dim: int
    factory: str  # faiss index_factory string, or "Flat" (no faiss index: exact scans)
    search_parameter: str | None  # "nprobe" for IVF indexes
    search_value: int | None
    recall_at_10: float | None  # of TUNING_QUERIES store rows' 10 nearest other rows, at search_value
    fingerprint: dict[str, Any]
    units: tuple[IndexedUnit, ...]  # in the index's row order: the build's, then each append's
    trained_rows: int  # rows when the quantizer was trained: an append beyond GROWTH_LIMIT x this asks for a rebuild
    faiss_file: str | None
    build_seconds: float
    faiss_version: str | None

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "IndexInfo":
        return cls(**{**document, "units": tuple(IndexedUnit(**unit) for unit in document["units"])})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Segments:
    """Runs of consecutive rows that keep their order from one numbering to another (index positions to
    store rows, and back): row `sources[r] + i` is row `targets[r] + i` (-1: not there) for i < lengths[r]."""
    sources: np.ndarray  # ascending
    targets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, runs: list[tuple[int, int, int]]) -> "Segments":
        """From (source, target, length) runs; empty runs are left out."""
        runs = sorted(run for run in runs if run[2] > 0)
        columns = np.array(runs, np.int64).reshape(-1, 3).T
        return cls(columns[0], columns[1], columns[2])

    def map(self, rows: np.ndarray) -> np.ndarray:
        """Each row's number on the other side; -1 stays -1, and so does a row the other side lacks."""
        rows = np.asarray(rows, np.int64)
        run = np.maximum(np.searchsorted(self.sources, rows, side="right") - 1, 0)
        mapped = self.targets[run] + rows - self.sources[run]
        return np.where((rows < 0) | (self.targets[run] < 0), -1, mapped)


@dataclass(frozen=True)
class Coverage:
    """An index's units against the store's: where the index's rows sit in the store, and the tail (the units
    the index does not cover, in the store's order), which a search scans exactly."""
    to_store: Segments  # index position -> store row
    to_index: Segments  # store row -> index position, -1 in the tail
    tail: tuple[IndexedUnit, ...]
    tail_to_store: Segments  # row of the tail (its units' rows concatenated) -> store row

    @property
    def tail_rows(self) -> int:
        return sum(unit.rows for unit in self.tail)


def coverage(store_files: list[str], indexed: tuple[IndexedUnit, ...], tail_rows: list[int]) -> Coverage:
    """How `indexed` (in index order) maps onto the store's feature files (the manifest's order), given the
    rows of the store's files the index does not cover (in that order)."""
    positions, start = {}, 0
    for unit in indexed:
        positions[unit.file] = (start, unit.rows)
        start += unit.rows
    to_store, to_index, tail_runs, tail, row, tail_row = [], [], [], [], 0, 0
    counts = iter(tail_rows)
    for name in store_files:
        if name in positions:
            position, rows = positions[name]
            to_store.append((position, row, rows))
            to_index.append((row, position, rows))
        else:
            rows = next(counts)
            tail.append(IndexedUnit(name, rows))
            to_index.append((row, -1, rows))
            tail_runs.append((tail_row, row, rows))
            tail_row += rows
        row += rows
    return Coverage(Segments.of(to_store), Segments.of(to_index), tuple(tail), Segments.of(tail_runs))


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


def read_info(root: str, output: str) -> IndexInfo | None:
    """The index.json of `output` in the store at `root`, or None when there is none; StaleIndex for an index
    of an older layout."""
    folder = index_path(root, output)
    path = os.path.join(folder, INFO_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        document = json.load(handle)
    # Built before rows.arrow, or before an index recorded its units: nothing says which rows it holds.
    old = [what for what, there in ((f"has no {ROWS_FILE}", os.path.exists(os.path.join(folder, ROWS_FILE))),
                                    ("records no units", "units" in document)) if not there]
    if old:
        raise StaleIndex(f"the index in {folder!r} is of an older layout (it {' and '.join(old)}); rebuild it "
                         f"with `featurize index {root} --rebuild`, "
                         f"or search with exact=True (--exact)")
    return IndexInfo.from_json(document)


def store_files(store) -> list[str]:
    """The store's feature files, one per unit, as its manifest names them (the store's row order)."""
    return list(store.manifest["files"]["features"])


def foreign(store, info: IndexInfo) -> str | None:
    """Why the index cannot serve the store at all (`was built ...`), None when its rows are the store's."""
    # Both read through Fingerprint: an index written before a fingerprint field existed holds its default.
    if Fingerprint.from_json(info.fingerprint).to_json() != store.fingerprint.to_json():
        return "was built with another model (its fingerprint is not the store's)"
    gone = sorted({unit.file for unit in info.units} - set(store_files(store)))
    if gone:
        return f"covers {len(gone)} unit files the store no longer lists (first: {gone[0]})"
    return None


class StoreIndex:
    """An index folder opened for one store: the memory-mapped matrix, faiss unless Flat, and the tail (the
    units it does not cover, read from their feature files)."""

    def __init__(self, folder: str, info: IndexInfo, covered: Coverage, tail: FilesReader):
        self.folder = folder
        self.info = info
        self.coverage = covered
        self.tail = tail
        # Only the rows index.json counts: an append killed before its commit may have written more.
        self.matrix = np.load(os.path.join(folder, MATRIX_FILE), mmap_mode="r")[:info.rows]
        self.sqnorms = np.load(os.path.join(folder, SQNORMS_FILE), mmap_mode="r")[:info.rows]
        self._faiss = None
        self._rows: pa.Table | None = None

    @classmethod
    def open(cls, store, output: str) -> "StoreIndex | None":
        """The store's index of `output`, or None when there is none; StaleIndex when it was built with
        another fingerprint or names a unit file the store no longer lists."""
        if not files.is_local(store.root) or store.manifest is None:
            return None
        folder = index_path(store.root, output)
        info = read_info(store.root, output)
        if info is None:
            return None
        refusal = foreign(store, info)
        if refusal:
            raise StaleIndex(f"the index in {folder!r} {refusal}; rebuild it with `featurize index {store.root} "
                             f"--rebuild`, or search with exact=True (--exact)")
        listed = store_files(store)
        covered = {unit.file for unit in info.units}
        tail = FilesReader(store.format, [files.join(store.root, name) for name in listed if name not in covered],
                           store.outputs)
        return cls(folder, info, coverage(listed, info.units, tail.rows()), tail)

    @property
    def rows(self) -> pa.Table:
        """rows.arrow in the index's order, memory-mapped: nothing is read until a column is used."""
        if self._rows is None:
            import pyarrow.ipc as ipc

            table = ipc.open_file(pa.memory_map(os.path.join(self.folder, ROWS_FILE))).read_all()
            self._rows = table.slice(0, self.info.rows)
        return self._rows

    def store_rows(self) -> pa.Table:
        """Every row's metadata in the store's order: slices of rows.arrow, and the tail's read from its files."""
        tail = self.tail.metadata() if self.coverage.tail else None
        if tail is not None:
            tail = tail.select(self.rows.column_names).cast(self.rows.schema)
        pieces: list[tuple[pa.Table, int, int]] = []  # (table, offset, length), contiguous runs merged
        tail_offset = 0
        for target, length in zip(self.coverage.to_index.targets, self.coverage.to_index.lengths):
            table, offset = (self.rows, int(target)) if target >= 0 else (tail, tail_offset)
            tail_offset += 0 if target >= 0 else int(length)
            if pieces and pieces[-1][0] is table and pieces[-1][1] + pieces[-1][2] == offset:
                pieces[-1] = (table, pieces[-1][1], pieces[-1][2] + int(length))
            else:
                pieces.append((table, offset, int(length)))
        if len(pieces) == 1 and pieces[0][0] is self.rows:
            return self.rows.slice(pieces[0][1], pieces[0][2])
        return pa.concat_tables([table.slice(offset, length) for table, offset, length in pieces] or [self.rows])

    def position(self, row: int) -> int | None:
        """The index position of a store row, None when the row is in the tail."""
        position = int(self.coverage.to_index.map(np.array([row]))[0])
        return position if position >= 0 else None

    @property
    def faiss_index(self):
        if self._faiss is None and self.info.factory != FLAT:
            import faiss

            # Memory-mapped: opening a 1 GB index takes milliseconds and only probed lists are paged in.
            self._faiss = faiss.read_index(os.path.join(self.folder, self.info.faiss_file), faiss.IO_FLAG_MMAP)
        return self._faiss

    def blocks(self):
        """The matrix as exact-scan blocks with precomputed norms (index positions)."""
        return matrix_blocks(self.matrix, self.sqnorms)

    def tail_blocks(self, chunk_rows: int = SCAN_ROWS) -> Iterator[Block]:
        """The tail's vectors as exact-scan blocks numbered by store row (a block never crosses a file, so
        it is contiguous in the store)."""
        for start, block in self.tail.blocks(self.info.output, chunk_rows):
            yield Block(int(self.coverage.tail_to_store.map(np.array([start]))[0]), block)

    def _search_indexed(self, queries: np.ndarray, k: int, metric: str, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of the indexed rows, as index positions: through faiss when it was built for `metric` (and not
        `exact`), otherwise an exact scan of the matrix."""
        if exact or self.info.factory == FLAT or metric != self.info.metric:
            return exact_search(self.blocks(), queries, k, metric)
        indices, scores = search_index(self.faiss_index, self.matrix, self.sqnorms, queries, k, metric,
                                        self.info.factory, self.info.search_value)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):  # the probed lists held fewer than k rows: those queries are answered exactly
            indices[short], scores[short] = exact_search(self.blocks(), queries[short], k, metric)
        return indices, scores

    def search(self, queries: np.ndarray, k: int, metric: str, *, exact: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k as store rows: the indexed rows' ranking merged with an exact scan of the tail."""
        rankings = []
        if self.info.rows:
            positions, scores = self._search_indexed(queries, min(k, self.info.rows), metric, exact)
            rankings.append((self.coverage.to_store.map(positions), scores))
        if self.coverage.tail_rows:
            rankings.append(exact_search(self.tail_blocks(), queries, min(k, self.coverage.tail_rows), metric))
        return merge_rankings(rankings, k, metric)
