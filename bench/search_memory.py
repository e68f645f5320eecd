"""Exact search over a large store in bounded memory: rows/s and peak RSS, both formats.

    python bench/search_memory.py [--rows 200000] [--dim 512] [--chunk-rows 16384] [--queries 10]

Writes a generated store in the real formats (Parquet shards through pyarrow with
featurize's schema, HDF5 shards through featurize's shard writer plus the virtual
features.h5, each with a manifest), then runs `FeatureStore.search` in a fresh process
per format and reports rows/s and that process's peak RSS (ru_maxrss), so the numbers
are the search's own, not the generator's.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import reported  # noqa: E402 - bench/ is not a package

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCK = 10_000


def blocks(rows: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, rows, BLOCK):
        count = min(BLOCK, rows - start)
        keys = [f"img{start + i:08d}.jpg" for i in range(count)]
        yield keys, rng.standard_normal((count, dim), dtype=np.float32)


def manifest(fmt: str, rows: int, dim: int, files: list[str]) -> dict:
    fingerprint = {"backbone": "generated", "outputs": {"embedding": dim}, "dtype": "float32"}
    return {"format": fmt, "fingerprint": fingerprint, "counts": {"inputs": rows, "rows": rows, "errors": 0},
            "files": {"features": files, "errors": []}}


def write_parquet(root: Path, rows: int, dim: int, shards: int = 4, make_blocks=blocks) -> None:
    """A finished Parquet store of the (keys, matrix) blocks `make_blocks(rows, dim)` yields."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.job.journal import write_json_atomically
    from pipeline.store.schema import feature_schema

    schema = feature_schema({"embedding": dim}, "float32", {"generated": True})
    (root / "features").mkdir(parents=True)
    per_shard = -(-rows // shards)
    files, writer, written = [], None, 0
    for keys, matrix in make_blocks(rows, dim):
        if writer is None or written >= per_shard:
            if writer:
                writer.close()
            files.append(f"features/features-{len(files):05d}-of-{shards:05d}.parquet")
            writer, written = pq.ParquetWriter(root / files[-1], schema), 0
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim)
        writer.write_table(pa.table([keys, keys, np.zeros(len(keys), np.int32), np.zeros(len(keys), np.int32),
                                     embedding], schema=schema))
        written += len(keys)
    writer.close()
    write_json_atomically(str(root / "manifest.json"), manifest("parquet", rows, dim, files))


def write_hdf5(root: Path, rows: int, dim: int, shards: int = 4) -> None:
    from pipeline.job.hdf5 import ShardWriter, write_virtual_store
    from pipeline.job.journal import write_json_atomically

    (root / "features").mkdir(parents=True)
    per_shard = -(-rows // shards)
    files, writer, written = [], None, 0
    fingerprint = manifest("hdf5", rows, dim, [])["fingerprint"]
    for keys, matrix in blocks(rows, dim):
        if writer is None or written >= per_shard:
            if writer:
                writer.close()
            files.append(f"features/features-{len(files):05d}-of-{shards:05d}.h5")
            writer, written = ShardWriter(str(root / files[-1]), {"embedding": dim}, "float32", fingerprint), 0
        for key, vector in zip(keys, matrix):
            writer.append({"key": key, "uri": key, "width": 0, "height": 0, "embedding": vector})
        written += len(keys)
    writer.close()
    write_virtual_store(str(root), [str(root / f) for f in files], {"embedding": dim}, "float32", fingerprint)
    write_json_atomically(str(root / "manifest.json"), manifest("hdf5", rows, dim, files))


def search_once(root: str, chunk_rows: int, queries: int) -> None:
    """Runs in a fresh process: open, search, report JSON on stdout."""
    from pipeline.store.feature_store import FeatureStore

    store = FeatureStore.open(root)
    vectors = np.random.default_rng(1).standard_normal((queries, store.dim), dtype=np.float32)
    start = time.perf_counter()
    result = store.search(vectors, k=10, chunk_rows=chunk_rows)
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(store), "seconds": elapsed, "peak_rss_mib": peak_mib,
                      "top": result.keys[0][0]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-rows", type=int, default=16_384)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--search-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search_only:
        search_once(args.search_only, args.chunk_rows, args.queries)
        return
    work = Path(tempfile.mkdtemp(prefix="featurize-search-bench-"))
    try:
        print(f"{args.rows} x {args.dim} float32 ({args.rows * args.dim * 4 / 2**20:.0f} MiB of vectors), "
              f"{args.queries} queries, k=10, chunk_rows={args.chunk_rows}\n")
        print("| format | rows/s | seconds | peak RSS MiB |")
        print("| --- | --- | --- | --- |")
        for fmt, writer in (("parquet", write_parquet), ("hdf5", write_hdf5)):
            writer(work / fmt, args.rows, args.dim)
            done = subprocess.run([sys.executable, __file__, "--search-only", str(work / fmt),
                                   "--chunk-rows", str(args.chunk_rows), "--queries", str(args.queries)],
                                  capture_output=True, text=True, timeout=900, check=True)
            report = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {fmt} | {report['rows'] / report['seconds']:,.0f} | {report['seconds']:.2f} "
                  f"| {report['peak_rss_mib']:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
