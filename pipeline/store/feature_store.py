"""FeatureStore: a finished featurize output (Parquet or HDF5) as keys + matrices, with search.

    store = FeatureStore.open("out/")
    len(store), store.keys[:3], store.dim, store.fingerprint.backbone
    store.rows                                     # key, uri, width, height (, predicted_*) as an Arrow table
    matrix = store.embeddings()                    # N x D numpy array
    for start, block in store.iter_embeddings(chunk_rows=65536): ...   # bounded memory
    vector = store.get("cat/001.jpg")
    result = store.search(vectors, k=10)           # cosine (or metric="l2") top-k; exact=True to scan

Rows are in shard order (shards sorted by name, rows in file order) for both formats, so
row i of `embeddings()` belongs to `keys[i]`. Reading is the format's reader's job
(pipeline.store.readers), ranking is pipeline.store.search's, the index is pipeline.store.index's
(built by pipeline.store.indexing). An indexed store answers from its index folder (memory-mapped)
without decoding a shard, and a local store is read without importing Apache Beam (pipeline.files),
so a search answers in well under a second.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from pipeline import files
from pipeline.store.fingerprint import Fingerprint
from pipeline.store.schema import (ERROR_SCHEMA, ERRORS_DIR, FEATURES_DIR, FINGERPRINT_ATTR, FINGERPRINT_KEY, MANIFEST,
                                   VIRTUAL_STORE)
from pipeline.store.readers import HDF5Reader, IncompleteStore, ParquetReader, StoreReader
from pipeline.store.search import METRICS, Block, SearchResult, as_queries, check_metric, exact_search, normalize

if TYPE_CHECKING:
    from pipeline.store.duplicates import DuplicateGroups

__all__ = ["FeatureStore", "IncompleteStore", "NoTextTower", "SearchResult", "METRICS"]
DEFAULT_CHUNK_ROWS = 65536


def _missing_features(root: str, manifest: dict[str, Any]) -> list[str]:
    """The feature files the manifest lists that are not there, relative to `root`."""
    # One listing instead of a request per shard; exists() only confirms what the listing lacks
    # (a path spelled differently, or a file in a subfolder).
    present = set(files.list_paths(files.join(root, FEATURES_DIR, "*")))
    return [path for path in manifest["files"]["features"]
            if files.join(root, path) not in present and not files.exists(files.join(root, path))]


def _size(path: str) -> int | None:
    """A file's size in bytes, None when it is not there (Beam's filesystems only for URIs)."""
    if files.is_local(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    from apache_beam.io.filesystems import FileSystems

    found = FileSystems.match([path])[0].metadata_list
    return found[0].size_in_bytes if found else None


def _string_scalar(text: str) -> pa.Scalar:
    """An Arrow string scalar built from its buffers: pyarrow imports pandas (a second) on the first
    conversion of a Python object, which a one-query command should not pay."""
    data = text.encode("utf-8")
    offsets = np.array([0, len(data)], np.int32)
    return pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])[0]


class NoTextTower(ValueError):
    """A text query on a store whose vectors are not in a joint image-text space; one sentence."""


class FeatureStore:
    """A finished featurize output directory, opened read-only."""

    def __init__(self, root: str, manifest: dict[str, Any] | None, fmt: str, fingerprint: dict[str, Any]):
        self.root = root.rstrip("/")
        self.manifest = manifest
        self.format = fmt
        self.fingerprint = Fingerprint.from_json(fingerprint)
        self.outputs: dict[str, int] = dict(self.fingerprint.outputs)
        self._rows: pa.Table | None = None
        self._keys: list[str] | None = None
        self._uris: list[str] | None = None
        self._reader: StoreReader | None = None
        self._indexes: dict[str, Any] = {}
        self._models: dict[int, Any] = {}
        self._text_tower: Any = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str, *, allow_incomplete: bool = False) -> "FeatureStore":
        """Open a featurize output; refuses one without manifest.json unless allow_incomplete, and
        one whose manifest lists a feature file that is gone."""
        root = root.rstrip("/")
        manifest_path = files.join(root, MANIFEST)
        if files.exists(manifest_path):
            manifest = files.read_json(manifest_path)
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
        parquet = files.list_paths(files.join(root, FEATURES_DIR, "*.parquet"))
        if parquet:
            import pyarrow.parquet as pq

            with files.open_read(parquet[0]) as handle:
                fingerprint = json.loads(pq.ParquetFile(handle).schema_arrow.metadata[FINGERPRINT_KEY])
            return cls(root, None, "parquet", fingerprint)
        shards = files.list_paths(files.join(root, FEATURES_DIR, "*.h5"))
        if shards:
            import h5py
            with files.open_read(shards[0]) as handle, h5py.File(handle, "r") as shard:
                fingerprint = json.loads(shard.attrs[FINGERPRINT_ATTR])
            return cls(root, None, "hdf5", fingerprint)
        raise IncompleteStore(f"{root!r} holds no featurize feature shards")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ layout
    @property
    def reader(self) -> StoreReader:
        """The format's reader (pipeline.store.readers), opened on first use."""
        if self._reader is None:
            if self.format == "hdf5":
                self._reader = HDF5Reader(self.root, self.outputs)
            elif self.manifest:
                self._reader = ParquetReader([files.join(self.root, p) for p in self.manifest["files"]["features"]],
                                             self.outputs)
            else:
                self._reader = ParquetReader(files.list_paths(files.join(self.root, FEATURES_DIR, "*.parquet")),
                                             self.outputs)
        return self._reader

    # ------------------------------------------------------------------ metadata
    @property
    def rows(self) -> pa.Table:
        """Every per-row column but the vectors (key, uri, width, height, and predicted_* when the
        store has predictions), in row order: memory-mapped from an index (pipeline.store.index), the
        units it does not cover read from their shards, else read from the shards once."""
        if self._rows is None:
            indexed = (self._current_index(name) for name in self.outputs)
            index = next((index for index in indexed if index is not None), None)
            self._rows = index.store_rows() if index is not None else self.reader.metadata()
        return self._rows

    @property
    def keys(self) -> list[str]:
        """Every key as a Python list (`rows["key"]` is the Arrow column, without the conversion)."""
        if self._keys is None:
            self._keys = self.rows["key"].to_pylist()
        return self._keys

    @property
    def uris(self) -> list[str]:
        if self._uris is None:
            self._uris = self.rows["uri"].to_pylist()
        return self._uris

    def uri_of(self, row: int) -> str:
        return self.rows["uri"][row].as_py()

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
        return self.reader.blocks(self.output_name(output), chunk_rows)

    def embeddings(self, output: str | None = None) -> np.ndarray:
        """The whole N x D matrix in memory (use iter_embeddings for stores larger than memory)."""
        name = self.output_name(output)
        blocks = [block for _, block in self.iter_embeddings(name)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.outputs[name]), np.float32)

    def dataset(self, output: str | None = None):
        """HDF5 only: the lazily read h5py dataset (slice it like an array; nothing loads until then)."""
        if self.format != "hdf5":
            raise TypeError("dataset() is for HDF5 stores; use iter_embeddings() to stream Parquet")
        return self.reader.dataset(self.output_name(output))

    def __contains__(self, key: str) -> bool:
        try:
            self.index_of(key)
        except KeyError:
            return False
        return True

    def index_of(self, key: str) -> int:
        """The row of `key`: one vectorised scan of the key column (about 10 ms per million rows)."""
        import pyarrow.compute as pc

        row = pc.index(self.rows["key"], _string_scalar(key)).as_py()
        if row < 0:
            raise KeyError(f"key {key!r} is not in the store")
        return row

    def get(self, key: str, output: str | None = None) -> np.ndarray:
        """The vector of one key (from the index's matrix when the index covers its unit)."""
        row = self.index_of(key)
        name = self.output_name(output)
        index = self._current_index(name)
        position = index.position(row) if index is not None else None
        if position is not None:
            return np.array(index.matrix[position], np.float32)
        return self.reader.row(name, row)

    # ------------------------------------------------------------------ search
    def index(self, output: str | None = None):
        """The `pipeline.store.index.StoreIndex` of an output, or None when it was never indexed; raises
        `pipeline.store.index.StaleIndex` when it was built with another model or names a unit file gone."""
        from pipeline.store.index import StoreIndex

        name = self.output_name(output)
        if name not in self._indexes:
            self._indexes[name] = StoreIndex.open(self, name)
        return self._indexes[name]

    def _current_index(self, name: str):
        """The index, or None when there is none or it is refused: for reads that the shards can answer."""
        from pipeline.store.index import StaleIndex

        try:
            return self.index(name)
        except StaleIndex:
            return None

    def search(self, vectors: np.ndarray | Sequence[float] | None = None, k: int = 10, *, metric: str = "cosine",
               output: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS, exact: bool = False,
               text: str | Sequence[str] | None = None) -> SearchResult:
        """Top-k of each query: `vectors`, or `text` (one sentence or several) embedded by the store's text
        tower (`embed_text`) and ranked against the model's own embedding (`text_output`). Through the output's
        index when it has one (`featurize index`; one of another model raises `pipeline.store.index.StaleIndex`),
        the units it does not cover (added since) scanned exactly and merged in (`tail_rows`, `from_tail`); with
        exact=True or without an index, an exact scan: of the index's memory-mapped matrix and the tail when
        there is a usable index, else of the store's shards in blocks of chunk_rows (memory
        O(chunk_rows x (D + queries)))."""
        check_metric(metric)
        if k < 1:
            raise ValueError(f"k {k} must be at least 1")
        if (vectors is None) == (text is None):
            raise ValueError("search takes either vectors or text")
        if text is not None:
            refusal = self.text_search_refusal(output)
            if refusal:
                raise NoTextTower(refusal)
            vectors, output = self.embed_text([text] if isinstance(text, str) else list(text)), self.text_output()
        name = self.output_name(output)
        queries = as_queries(vectors, self.outputs[name])
        index = self._current_index(name) if exact else self.index(name)
        tail_rows, from_tail = 0, None
        if index is not None:
            indices, scores = index.search(queries, k, metric, exact=exact)
            tail_rows, from_tail = index.coverage.tail_rows, index.coverage.to_index.map(indices) < 0
        else:
            blocks = (Block(start, block) for start, block in self.iter_embeddings(name, chunk_rows))
            indices, scores = exact_search(blocks, queries, k, metric)
        keys = self.rows["key"]
        return SearchResult(indices, scores, [[keys[int(i)].as_py() for i in row] for row in indices], tail_rows,
                            from_tail)

    # ------------------------------------------------------------------ duplicates
    def duplicates(self, threshold: float, *, metric: str = "cosine", output: str | None = None,
                   exact: bool = False) -> "DuplicateGroups":
        """Near-duplicate groups (`pipeline.store.duplicates.DuplicateGroups`): the connected components of the
        pairs of rows with cosine similarity >= threshold (or L2 distance <= threshold). Through the range search
        of the output's IVF index when it has one for `metric` covering the store (approximate: see
        pipeline.store.duplicates), else, or with exact=True, by blocked matrix products over a memory-mapped
        copy of the vectors."""
        import tempfile

        from pipeline.store import duplicates as dup
        from pipeline.store.index import FLAT

        dup.check_threshold(threshold, metric)
        name = self.output_name(output)
        index = None if exact else self._current_index(name)
        if index is not None and index.info.factory != FLAT and index.info.metric == metric:
            if index.coverage.tail:
                raise ValueError(f"the index of {self.root!r} does not cover {index.coverage.tail_rows:,} rows of "
                                 f"{len(index.coverage.tail)} units added since; run `featurize index {self.root}` to "
                                 f"add them, or find the groups exactly (exact=True, --exact)")
            pairs = dup.index_pairs(index.faiss_index, index.matrix, index.sqnorms, threshold, metric,
                                    index.info.search_value)
            to_store = index.coverage.to_store
            labels = np.empty(index.info.rows, np.int64)  # each store row's component, named by a store row
            labels[to_store.map(np.arange(index.info.rows))] = to_store.map(dup.components(index.info.rows, pairs))
            method = "index"
        else:
            with tempfile.TemporaryDirectory(prefix="featurize-duplicates-") as folder:
                matrix = np.lib.format.open_memmap(os.path.join(folder, "vectors.npy"), mode="w+", dtype=np.float32,
                                                   shape=(len(self), self.outputs[name]))
                for start, block in self.iter_embeddings(name):
                    matrix[start:start + len(block)] = normalize(block) if metric == "cosine" else block
                labels = dup.components(len(self), dup.exact_pairs(matrix, threshold, metric))
                del matrix  # unmapped before its folder goes
            method = "exact"
        table = dup.groups_table(self.rows, *dup.group_rows(labels))
        return dup.DuplicateGroups(table, threshold, metric, method, len(self))

    # ------------------------------------------------------------------ queries
    def embed(self, images: Sequence[bytes], output: str | None = None) -> np.ndarray:
        """Vectors for new images with this store's fingerprint: same backbone, weights, sizes,
        resize, preprocessing, layers and pooling, so they are comparable with the stored rows."""
        from pipeline import logs
        from pipeline.model.runtime import build_feature_model, tensorflow_without_jax
        from pipeline.images import DEFAULT_MAX_PIXELS, decode_for_model, stack_for_model

        max_pixels = (self.manifest or {}).get("config", {}).get("max_pixels", DEFAULT_MAX_PIXELS)
        decode = self.fingerprint.decode_spec(max_pixels)
        pixels, geometry = stack_for_model([decode_for_model(data, decode)[0] for data in images])
        # TensorFlow's lines (C++, past Python's stderr; some on the first call) go to featurize's log, as in a run.
        with logs.native_stderr_to_log(), tensorflow_without_jax():
            # Kept per batch size (the compiled shape is fixed): a server embeds one upload after another.
            if len(pixels) not in self._models:
                self._models[len(pixels)] = build_feature_model(self.fingerprint.model_spec(self.root),
                                                                batch_size=len(pixels))
            vectors = self._models[len(pixels)](pixels, geometry)[self.output_name(output)]
        return vectors.astype(self.fingerprint.dtype).astype(np.float32)

    def text_output(self) -> str | None:
        """The output that holds a keras-hub model's own image embedding (pooling `model` of its final
        output), the one a text query is ranked against; None when the store has none."""
        from pipeline.model.backbones import MODEL_POOLING
        from pipeline.model.hub import FINAL_LAYER

        fp = self.fingerprint
        if fp.family is None or fp.layers or MODEL_POOLING not in (fp.pooling or ()):
            return None
        return "embedding" if len(self.outputs) == 1 else f"{FINAL_LAYER}/{MODEL_POOLING}"

    def text_search_refusal(self, output: str | None = None) -> str | None:
        """Why this store (or its `output`) cannot answer a text query, in one sentence, decided from its
        fingerprint before any model loads; None when it can: the own embedding of a CLIP or SigLIP model."""
        from pipeline.model.hub import FAMILY_NAMES

        fp = self.fingerprint
        family = FAMILY_NAMES.get(fp.family or "")
        if family is None or family.text_preprocessor is None:
            kind = f"a {family.name} model, which sees images only" if family else "not a keras-hub model"
            return (f"store {self.root!r} was made with {fp.backbone} ({kind}), so it has no text tower; text "
                    f"search needs a CLIP or SigLIP store, e.g. --model hub:siglip2_base_patch16_224")
        own = self.text_output()
        if own is None:
            pooled = f"--layers {','.join(fp.layers)} " if fp.layers else ""
            return (f"store {self.root!r} holds {pooled}--pooling {','.join(fp.pooling or ())} vectors of "
                    f"{fp.backbone}, which are not in its joint image-text space; text search needs a store made "
                    f"with --pooling model (the default)")
        if output is not None and output != own:
            return (f"output {output!r} of store {self.root!r} is not in {fp.backbone}'s joint image-text space; "
                    f"text search ranks output {own!r}")
        return None

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for sentences in this store's joint image-text space: the preset's own tokenizer and text
        tower (loaded from the store's copy of the preset on the first call), normalised and stored like
        the rows. Raises NoTextTower for a store that has none."""
        refusal = self.text_search_refusal()
        if refusal:
            raise NoTextTower(refusal)
        from pipeline import logs
        from pipeline.model.runtime import tensorflow_without_jax

        fp = self.fingerprint
        # TensorFlow's lines (C++, past Python's stderr) go to featurize's log, as in a run.
        with logs.native_stderr_to_log(), tensorflow_without_jax():
            if self._text_tower is None:
                from pipeline.model.hub import FAMILY_NAMES, TextTower, stage_preset

                folder = stage_preset(files.join(self.root, fp.weights), fp.weights_sha256)
                self._text_tower = TextTower(folder, FAMILY_NAMES[fp.family])
            vectors = self._text_tower.embed(texts)
        if fp.l2_normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(fp.dtype).astype(np.float32)

    # ------------------------------------------------------------------ errors
    def errors(self) -> pa.Table:
        """The error rows as a pyarrow Table (key, uri, stage, error_type, message)."""
        import pyarrow.parquet as pq

        paths = ([files.join(self.root, p) for p in self.manifest["files"]["errors"]] if self.manifest
                 else files.list_paths(files.join(self.root, ERRORS_DIR, "*.parquet")))
        tables = []
        for path in paths:
            with files.open_read(path) as handle:
                tables.append(pq.ParquetFile(handle).read())  # not read_table: pyarrow.dataset imports pandas
        # Not ERROR_SCHEMA.empty_table(): it imports pandas (a second), which reading errors does not need.
        return pa.concat_tables(tables) if tables else pa.Table.from_batches([], schema=ERROR_SCHEMA)

    def file_sizes(self) -> dict[str, int | None]:
        """Every file of a finished store, relative to its root, in the manifest's order (features,
        features.h5 for HDF5, errors, manifest.json), with its size in bytes (None: missing)."""
        listed = self.manifest["files"]
        names = [*listed["features"], *([VIRTUAL_STORE] if self.format == "hdf5" else []), *listed["errors"], MANIFEST]
        return {name: _size(files.join(self.root, name)) for name in names}
