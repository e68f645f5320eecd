"""The index against exact scans: build time, size, latency, recall, rows/s and peak RSS.

    python bench/index_search.py [--rows 100000 500000 1000000] [--dim 256] [--queries 200] [--spread 1.0]

For each size: writes a Parquet store of clustered synthetic vectors (a mixture of Gaussians:
real embeddings have clusters, uniform noise has no neighbours worth finding), then in fresh
processes, so each peak RSS (ru_maxrss) is that step's own:

- build: `pipeline.store.indexing.build_index` (matrix + faiss index), its wall time and the folder's size;
- ann: `FeatureStore.search` one query at a time through the index (latency p50/p99), recall@10
  against the exact cosine top-10 of the same queries, which are new points of the mixture,
  not rows of the store;
- exact (matrix): `search(..., exact=True)` of a batch of 10 queries over the memory-mapped matrix;
- exact (parquet): the same batch with no index, decoding the store's Parquet shards;
- cli: `featurize search OUT --query KEY` as a user types it, a fresh process each time (Python
  start-up and imports included), wall time, fastest of CLI_REPEATS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_memory import BLOCK, write_parquet  # noqa: E402
from machine import reported  # noqa: E402 - bench/ is not a package
import steps  # noqa: E402

CLUSTERS = 1000
CLI_REPEATS = 5
SPREAD = 1.0  # noise scale against unit-variance cluster centres (--spread; 1.5: clusters overlap more)


def centres(dim: int) -> np.ndarray:
    return np.random.default_rng(1234).standard_normal((CLUSTERS, dim), dtype=np.float32)


def mixture(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    labels = rng.integers(0, CLUSTERS, count)
    spread = float(os.environ.get("BENCH_SPREAD", SPREAD))  # the parent's --spread, for the step processes too
    return centres(dim)[labels] + spread * rng.standard_normal((count, dim), dtype=np.float32)


def clustered_blocks(rows: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, rows, BLOCK):
        count = min(BLOCK, rows - start)
        yield [f"img{start + i:08d}.jpg" for i in range(count)], mixture(count, dim, rng)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder_bytes(folder: str) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())


def step_build(root: str) -> dict:
    from pipeline.store.index import index_path
    from pipeline.store.indexing import build_index
    from pipeline.store.feature_store import FeatureStore

    store = FeatureStore.open(root)
    started = time.perf_counter()
    info = build_index(store)
    seconds = time.perf_counter() - started
    folder = index_path(root, info.output)
    faiss_bytes = os.path.getsize(os.path.join(folder, "index.faiss")) if info.factory != "Flat" else 0
    return {"seconds": seconds, "factory": info.factory, "nprobe": info.search_value,
            "tuned_recall": info.recall_at_10, "index_mib": faiss_bytes / 2**20,
            "folder_mib": folder_bytes(folder) / 2**20, "peak_rss_mib": peak_rss_mib()}


def _queries(count: int, dim: int) -> np.ndarray:
    return mixture(count, dim, np.random.default_rng(99))


def step_ann(root: str, queries: int) -> dict:
    from pipeline.store.feature_store import FeatureStore

    store = FeatureStore.open(root)
    vectors = _queries(queries, store.dim)
    truth = store.search(vectors, k=10, exact=True).indices
    store.search(vectors[0], k=10)  # opens and pages in the index: not part of a query's latency
    latencies, found = [], []
    for vector in vectors:
        started = time.perf_counter()
        found.append(store.search(vector, k=10).indices[0])
        latencies.append(time.perf_counter() - started)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
    return {"p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "recall_at_10": recall, "peak_rss_mib": peak_rss_mib()}


def step_exact(root: str, use_index: bool) -> dict:
    from pipeline.store.search import Block, exact_search
    from pipeline.store.feature_store import FeatureStore

    store = FeatureStore.open(root)
    vectors = _queries(10, store.dim)

    def search() -> None:
        if use_index:
            store.search(vectors, k=10, exact=True)
        else:  # what search does without an index: decode the Parquet shards block by block
            exact_search((Block(start, block) for start, block in store.iter_embeddings()), vectors, 10, "cosine")

    search()  # warm: page cache and BLAS threads, as in a server
    started = time.perf_counter()
    search()
    seconds = time.perf_counter() - started
    return {"rows_per_s": len(store) / seconds, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def cli_search_seconds(root: str, rows: int) -> float:
    """Wall time of the whole `featurize search` command for a key in the middle of the store."""
    command = [sys.executable, "-m", "pipeline", "search", root, "--query", f"img{rows // 2:08d}.jpg", "--k", "10"]
    times = []
    for _ in range(CLI_REPEATS):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, timeout=600, check=True)
        times.append(time.perf_counter() - started)
    return min(times)


def run_step(*args: str) -> dict:
    return steps.run_step(__file__, *args, timeout_s=1800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 500_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--spread", type=float, default=SPREAD, help="cluster noise scale (larger: harder)")
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, root, *rest = args.step
        by_name = {"build": lambda: step_build(root), "ann": lambda: step_ann(root, int(rest[0])),
                   "exact-matrix": lambda: step_exact(root, True), "exact-parquet": lambda: step_exact(root, False)}
        print(json.dumps(by_name[name]()))
        return
    os.environ["BENCH_SPREAD"] = str(args.spread)
    print(f"clustered float32 vectors ({CLUSTERS} Gaussian clusters, spread {args.spread}), dim {args.dim}, k=10, "
          f"{os.cpu_count()} cores; ann: {args.queries} single queries, new points of the mixture; "
          f"exact: one batch of 10 queries\n")
    print("| rows | index | build s | index MiB | matrix+index MiB | build peak RSS MiB | ann p50 ms | ann p99 ms "
          "| recall@10 | ann peak RSS MiB | exact (matrix) rows/s | exact (matrix) peak RSS MiB "
          "| exact (parquet) rows/s | exact (parquet) peak RSS MiB | featurize search s |")
    print("| " + " | ".join(["---"] * 15) + " |")
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix="featurize-index-bench-"))
        try:
            root = str(work / "store")
            write_parquet(work / "store", rows, args.dim, make_blocks=clustered_blocks)
            build = run_step("build", root)
            ann = run_step("ann", root, str(args.queries))
            matrix = run_step("exact-matrix", root)
            parquet = run_step("exact-parquet", root)
            cli = cli_search_seconds(root, rows)
            print(f"| {rows:,} | {build['factory']} nprobe={build['nprobe']} | {build['seconds']:.1f} "
                  f"| {build['index_mib']:.0f} | {build['folder_mib']:.0f} | {build['peak_rss_mib']:.0f} "
                  f"| {ann['p50_ms']:.2f} | {ann['p99_ms']:.2f} | {ann['recall_at_10']:.3f} | {ann['peak_rss_mib']:.0f} "
                  f"| {matrix['rows_per_s']:,.0f} | {matrix['peak_rss_mib']:.0f} "
                  f"| {parquet['rows_per_s']:,.0f} | {parquet['peak_rss_mib']:.0f} | {cli:.2f} |", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
