"""FeatureStore: a finished featurize output (Parquet or HDF5) as keys + matrices, with exact search.

    store = FeatureStore.open("out/")
    len(store), store.keys[:3], store.dim, store.fingerprint["backbone"]
    matrix = store.embeddings()                    # N x D numpy array
    for start, block in store.iter_embeddings(chunk_rows=65536): ...   # bounded memory
    vector = store.get("cat/001.jpg")
    result = store.search(vectors, k=10)           # exact cosine (or metric="l2") top-k

Rows are in shard order (shards sorted by name, rows in file order) for both formats, so
row i of `embeddings()` belongs to `keys[i]`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.hdf5 import FINGERPRINT_ATTR, VIRTUAL_STORE
from pipeline.journal import list_paths, read_json
from pipeline.sinks import ERRORS_DIR, FEATURES_DIR, FINGERPRINT_KEY, MANIFEST

METRICS = ("cosine", "l2")
DEFAULT_CHUNK_ROWS = 65536


class IncompleteStore(FileNotFoundError):
    """The output has no manifest.json (the run did not finish, or is still running), or a feature
    file its manifest lists is gone."""


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query: `indices` into the store's rows, `scores` (cosine similarity, higher is
    closer; or L2 distance, lower is closer) and the matching `keys`, best first."""
    indices: np.ndarray  # (queries, k) int64
    scores: np.ndarray  # (queries, k) float32
    keys: list[list[str]]


def _missing_features(root: str, manifest: dict[str, Any]) -> list[str]:
    """The feature files the manifest lists that are not there, relative to `root`."""
    # One listing instead of a request per shard; exists() only confirms what the listing lacks
    # (a path spelled differently, or a file in a subfolder).
    present = set(list_paths(FileSystems.join(root, FEATURES_DIR, "*")))
    return [path for path in manifest["files"]["features"]
            if FileSystems.join(root, path) not in present and not FileSystems.exists(FileSystems.join(root, path))]


def _as_matrix(column, dim: int) -> np.ndarray:
    """A fixed_size_list Arrow column -> (rows, dim) float32 without a Python loop."""
    values = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim).astype(np.float32, copy=False)


class FeatureStore:
    """A finished featurize output directory, opened read-only."""

    def __init__(self, root: str, manifest: dict[str, Any] | None, fmt: str, fingerprint: dict[str, Any]):
        self.root = root.rstrip("/")
        self.manifest = manifest
        self.format = fmt
        self.fingerprint = fingerprint
        self.outputs: dict[str, int] = dict(fingerprint["outputs"])
        self._keys: list[str] | None = None
        self._uris: list[str] | None = None
        self._index: dict[str, int] | None = None
        self._h5 = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str, *, allow_incomplete: bool = False) -> "FeatureStore":
        """Open a featurize output; refuses one without manifest.json unless allow_incomplete, and
        one whose manifest lists a feature file that is gone."""
        root = root.rstrip("/")
        manifest_path = FileSystems.join(root, MANIFEST)
        if FileSystems.exists(manifest_path):
            manifest = read_json(manifest_path)
            # Checked here, not per read: features.h5 would read a missing shard's rows as zero
            # vectors with empty keys, without an error.
            missing = _missing_features(root, manifest)
            if missing:
                raise IncompleteStore(f"{root!r} is missing {len(missing)} of the "
                                      f"{len(manifest['files']['features'])} feature files its {MANIFEST} lists "
                                      f"(first: {missing[0]}); restore them or re-create the store")
            fmt, fingerprint = manifest["format"], manifest["fingerprint"]
            return cls(root, manifest, fmt, fingerprint)
        if not allow_incomplete:
            raise IncompleteStore(f"{root!r} has no {MANIFEST}: the run did not finish, so the store may be "
                                  f"missing rows; pass allow_incomplete=True to open what is there")
        parquet = list_paths(FileSystems.join(root, FEATURES_DIR, "*.parquet"))
        if parquet:
            with FileSystems.open(parquet[0]) as handle:
                fingerprint = json.loads(pq.ParquetFile(handle).schema_arrow.metadata[FINGERPRINT_KEY])
            return cls(root, None, "parquet", fingerprint)
        shards = list_paths(FileSystems.join(root, FEATURES_DIR, "*.h5"))
        if shards:
            import h5py
            with FileSystems.open(shards[0]) as handle, h5py.File(handle, "r") as shard:
                fingerprint = json.loads(shard.attrs[FINGERPRINT_ATTR])
            return cls(root, None, "hdf5", fingerprint)
        raise IncompleteStore(f"{root!r} holds no featurize feature shards")

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ layout
    def _parquet_files(self) -> list[str]:
        if self.manifest:
            return [FileSystems.join(self.root, p) for p in self.manifest["files"]["features"]]
        return list_paths(FileSystems.join(self.root, FEATURES_DIR, "*.parquet"))

    def _hdf5(self):
        """The virtual features.h5 (complete stores) or, for an incomplete one, nothing."""
        if self._h5 is None:
            import h5py
            path = FileSystems.join(self.root, VIRTUAL_STORE)
            if not (FileSystems.get_scheme(path) is None and os.path.exists(path)):
                raise IncompleteStore(f"{path!r} is missing or not on a local disk; h5py reads the "
                                      f"virtual store from a local folder (copy the store locally)")
            self._h5 = h5py.File(path, "r")
        return self._h5

    def _column(self, name: str) -> list:
        if self.format == "hdf5":
            dataset = self._hdf5()[name]
            return list(dataset.asstr()[:]) if dataset.dtype.kind == "O" else dataset[:].tolist()
        values: list = []
        for path in self._parquet_files():
            with FileSystems.open(path) as handle:
                values += pq.read_table(handle, columns=[name]).column(name).to_pylist()
        return values

    # ------------------------------------------------------------------ metadata
    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = self._column("key")
        return self._keys

    @property
    def uris(self) -> list[str]:
        if self._uris is None:
            self._uris = self._column("uri")
        return self._uris

    def __len__(self) -> int:
        if self.manifest:
            return int(self.manifest["counts"]["rows"])
        return len(self.keys)

    def output_name(self, output: str | None = None) -> str:
        """The output to use: `output`, or the only one there is."""
        if output is None:
            if len(self.outputs) == 1:
                return next(iter(self.outputs))
            raise ValueError(f"this store has {len(self.outputs)} outputs; pass output= one of: "
                             f"{', '.join(self.outputs)}")
        if output not in self.outputs:
            raise KeyError(f"output {output!r} is not in this store; it has: {', '.join(self.outputs)}")
        return output

    @property
    def dim(self) -> int:
        """Dimension of the store's only output (see `outputs` for several)."""
        return self.outputs[self.output_name()]

    # ------------------------------------------------------------------ vectors
    def iter_embeddings(self, output: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
                        ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row index, float32 block of at most chunk_rows x D), in row order."""
        name = self.output_name(output)
        dim = self.outputs[name]
        start = 0
        if self.format == "hdf5":
            dataset = self._hdf5()[name]
            for start in range(0, dataset.shape[0], chunk_rows):
                yield start, dataset[start:start + chunk_rows].astype(np.float32, copy=False)
            return
        for path in self._parquet_files():
            with FileSystems.open(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=[name]):
                    block = _as_matrix(batch.column(0), dim)
                    yield start, block
                    start += len(block)

    def embeddings(self, output: str | None = None) -> np.ndarray:
        """The whole N x D matrix in memory (use iter_embeddings for stores larger than memory)."""
        name = self.output_name(output)
        blocks = [block for _, block in self.iter_embeddings(name)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.outputs[name]), np.float32)

    def dataset(self, output: str | None = None):
        """HDF5 only: the lazily read h5py dataset (slice it like an array; nothing loads until then)."""
        if self.format != "hdf5":
            raise TypeError("dataset() is for HDF5 stores; use iter_embeddings() to stream Parquet")
        return self._hdf5()[self.output_name(output)]

    def index_of(self, key: str) -> int:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        if key not in self._index:
            raise KeyError(f"key {key!r} is not in the store")
        return self._index[key]

    def get(self, key: str, output: str | None = None) -> np.ndarray:
        """The vector of one key."""
        row = self.index_of(key)
        name = self.output_name(output)
        if self.format == "hdf5":
            return self._hdf5()[name][row].astype(np.float32)
        for start, block in self.iter_embeddings(name):
            if start <= row < start + len(block):
                return block[row - start].copy()
        raise KeyError(key)

    # ------------------------------------------------------------------ search
    def search(self, vectors: np.ndarray | Sequence[float], k: int = 10, *, metric: str = "cosine",
               output: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> SearchResult:
        """Exact top-k over the whole store, streaming it in blocks of chunk_rows rows.

        Memory is O(chunk_rows x (D + queries)) whatever the store's size.
        """
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        name = self.output_name(output)
        if queries.shape[1] != self.outputs[name]:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the store's {name!r} has {self.outputs[name]}")
        if metric == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        best_scores = np.full((len(queries), 0), np.nan, np.float32)
        best_index = np.zeros((len(queries), 0), np.int64)
        sign = -1.0 if metric == "cosine" else 1.0  # rank ascending on sign * score
        for start, block in self.iter_embeddings(name, chunk_rows):
            if metric == "cosine":
                block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
                scores = queries @ block.T
            else:
                squared = (np.sum(queries ** 2, axis=1)[:, None] - 2 * queries @ block.T
                           + np.sum(block ** 2, axis=1)[None, :])
                scores = np.sqrt(np.maximum(squared, 0))
            candidates = np.concatenate([best_scores, scores.astype(np.float32)], axis=1)
            indices = np.concatenate([best_index, np.broadcast_to(
                np.arange(start, start + block.shape[0]), scores.shape)], axis=1)
            keep = min(k, candidates.shape[1])
            part = np.argpartition(sign * candidates, keep - 1, axis=1)[:, :keep]
            best_scores = np.take_along_axis(candidates, part, axis=1)
            best_index = np.take_along_axis(indices, part, axis=1)
        order = np.argsort(sign * best_scores, axis=1, kind="stable")
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_index = np.take_along_axis(best_index, order, axis=1)
        keys = self.keys
        return SearchResult(best_index, best_scores, [[keys[i] for i in row] for row in best_index])

    # ------------------------------------------------------------------ queries
    def embed(self, images: Sequence[bytes], output: str | None = None) -> np.ndarray:
        """Vectors for new images with this store's fingerprint: same backbone, weights, sizes,
        resize, preprocessing, layers and pooling, so they are comparable with the stored rows."""
        from pipeline.handler import ModelSpec, build_feature_model
        from pipeline.images import DEFAULT_MAX_PIXELS, DecodeSpec, decode_image

        fp = self.fingerprint
        weights = None if fp["weights"] == "none" else fp["weights"]
        height, width = fp["input_size"]
        max_pixels = (self.manifest or {}).get("config", {}).get("max_pixels", DEFAULT_MAX_PIXELS)
        decode = DecodeSpec(height, width, fp["resize"], fp["interpolation"], max_pixels,
                            fp["jpeg_draft"], fp["exif_transpose"])
        # weights_sha256 makes the worker-side staging verify the file is the one the store was made with.
        spec = ModelSpec(fp["backbone"], (height, width), weights, tuple(fp["layers"]) if fp["layers"] else None,
                         tuple(fp["pooling"]), fp.get("gem_p") or 3.0, fp["l2_normalize"],
                         weights_sha256=fp.get("weights_sha256"), precision=fp.get("precision", "float32"))
        pixels = np.stack([decode_image(data, decode)[0] for data in images])
        model = build_feature_model(spec, batch_size=len(pixels))
        return model(pixels)[self.output_name(output)].astype(fp["dtype"]).astype(np.float32)

    # ------------------------------------------------------------------ errors
    def errors(self):
        """The error rows as a pyarrow Table (key, uri, stage, error_type, message)."""
        import pyarrow as pa

        from pipeline.sinks import ERROR_SCHEMA
        paths = ([FileSystems.join(self.root, p) for p in self.manifest["files"]["errors"]] if self.manifest
                 else list_paths(FileSystems.join(self.root, ERRORS_DIR, "*.parquet")))
        tables = []
        for path in paths:
            with FileSystems.open(path) as handle:
                tables.append(pq.read_table(handle))
        return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()
