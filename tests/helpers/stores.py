"""Stores for tests, written with featurize's own writers and no model: clustered vectors with neighbours
worth finding (`clustered`), as a finished store (`generated_store`). Not a test module."""
from __future__ import annotations

import numpy as np

from pipeline.job.manifest import finalize_store
from pipeline.job.entries import UnitEntry
from pipeline.job.writer import UnitWriter
from pipeline.store.feature_store import FeatureStore
from pipeline.store.search import Block, exact_search

DIM = 16


def clustered(rows, dim=DIM, seed=0):
    """Rows of a Gaussian mixture (40 clusters): neighbours worth finding, as real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((40, dim)).astype(np.float32)
    return centres[rng.integers(0, 40, rows)] + 0.3 * rng.standard_normal((rows, dim)).astype(np.float32)


def generated_store(out, vectors, fmt="parquet", units=3, first_unit=0):
    """A finished store holding `vectors` ({output: N x D}) written with featurize's own writers, and
    its manifest; `first_unit` > 0 adds units to an existing store, as a --resume would."""
    outputs = {name: matrix.shape[1] for name, matrix in vectors.items()}
    fingerprint = {"backbone": "generated", "outputs": outputs, "dtype": "float32"}
    rows = len(next(iter(vectors.values())))
    bounds = np.linspace(0, rows, units + 1).astype(int)
    for unit, (low, high) in enumerate(zip(bounds[:-1], bounds[1:]), first_unit):
        writer = UnitWriter(str(out), f"files-{unit:03d}", fmt, fingerprint)
        for i in range(low, high):
            key = f"u{unit}/img{i:05d}.jpg"
            writer.add_row({"key": key, "uri": f"/images/{key}", "width": 1, "height": 1,
                            **{name: matrix[i] for name, matrix in vectors.items()}})
        writer.commit(UnitEntry(f"files-{unit:03d}", "files", "", int(high - low),
                                keys=tuple(f"u{unit}/img{i:05d}.jpg" for i in range(low, high))))
    finalize_store(str(out), {"format": fmt, "fingerprint": fingerprint}, started_at=0.0)
    return FeatureStore.open(str(out))


def exact_top(store, queries, k, metric="cosine"):
    """The exact top-k of `queries` by scanning the store's shards."""
    return exact_search((Block(s, b) for s, b in store.iter_embeddings()), queries, k, metric)


def recall(found, truth):
    """Mean fraction of each row of `truth` that `found` holds."""
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def grow_store(out, fmt="parquet"):
    """What a --resume that found new files does to a store made with generated_store(..., first_unit=1): two
    units of 30 rows, files-000 (keys u0/..., sorting before every unit) and files-009 (u9/..., after)."""
    generated_store(out, {"embedding": clustered(30, seed=40)}, fmt, units=1, first_unit=0)
    return generated_store(out, {"embedding": clustered(30, seed=49)}, fmt, units=1, first_unit=9)
