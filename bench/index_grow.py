"""Appending to an index against building it: what `featurize index OUT` costs after a --resume added rows.

    python bench/index_grow.py [--rows 200000] [--added 10000] [--dim 256] [--repeats 3]

Writes a Parquet store of clustered synthetic vectors (bench/index_search.py's mixture), builds its index
(`build_index`, the automatic IVF choice), then adds a unit of --added rows as a --resume would (a new feature
file and manifest) and times `update_index`, which appends them (quantizer and nprobe kept). Each timing is
the fastest of --repeats runs in a fresh process (peak RSS is that process's own); before each append run the
index folder is restored to its built state (not timed). Also: a search of the grown store before the append
(the new unit scanned exactly and merged), one query at a time. The target is append <= 0.3x build.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.index_search import clustered_blocks, mixture, peak_rss_mib  # noqa: E402
from bench.search_memory import write_parquet  # noqa: E402
from machine import reported  # noqa: E402 - bench/ is not a package
from steps import fastest, run_step  # noqa: E402


def grow(root: Path, rows: int, dim: int) -> None:
    """A --resume's effect on the store: one more feature file, and the manifest that counts it."""
    with tempfile.TemporaryDirectory() as scratch:
        write_parquet(Path(scratch) / "s", rows, dim, shards=1, make_blocks=lambda r, d: clustered_blocks(r, d, seed=7))
        shutil.move(str(Path(scratch) / "s/features/features-00000-of-00001.parquet"), root / "features/grown.parquet")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["features"].append("features/grown.parquet")
    for field in ("inputs", "rows"):
        manifest["counts"][field] += rows
    (root / "manifest.json").write_text(json.dumps(manifest))


def step(name: str, root: str) -> dict:
    from pipeline.store.feature_store import FeatureStore
    from pipeline.store.indexing import build_index, update_index

    store = FeatureStore.open(root)
    started = time.perf_counter()
    if name == "build":
        info = build_index(store)
        return {"seconds": time.perf_counter() - started, "factory": info.factory, "peak_rss_mib": peak_rss_mib()}
    if name == "append":
        update = update_index(store)
        assert not update.built and update.added_units == 1, update
        return {"seconds": time.perf_counter() - started, "added": update.added_rows, "peak_rss_mib": peak_rss_mib()}
    queries = mixture(50, store.dim, np.random.default_rng(99))
    store.search(queries[0], k=10)  # opens the index, reads the tail once into the page cache
    latencies = []
    for query in queries:
        started = time.perf_counter()
        result = store.search(query, k=10)
        latencies.append(time.perf_counter() - started)
    return {"p50_ms": 1000 * float(np.median(latencies)), "tail_rows": result.tail_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--added", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(*args.step)))
        return
    print(f"{args.rows:,} x {args.dim} clustered float32 rows + {args.added:,} added; {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f} at start; fastest of {args.repeats} fresh processes\n")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "store"
        write_parquet(root, args.rows, args.dim, make_blocks=clustered_blocks)
        builds = [run_step(__file__, "build", str(root)) for _ in range(args.repeats)]
        built = Path(scratch) / "built-index"
        shutil.copytree(root / "index", built)
        grow(root, args.added, args.dim)
        tail = run_step(__file__, "search", str(root))
        appends = []
        for _ in range(args.repeats):
            shutil.rmtree(root / "index")
            shutil.copytree(built, root / "index")
            appends.append(run_step(__file__, "append", str(root)))
        build, append = fastest(builds), fastest(appends)
        print("| rows | added | index | build s | build peak RSS MiB | append s | append peak RSS MiB | append / build "
              "| search before the append: tail rows, p50 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {args.rows:,} | {append['added']:,} | {build['factory']} | {build['seconds']:.2f} "
              f"| {build['peak_rss_mib']:.0f} | {append['seconds']:.2f} | {append['peak_rss_mib']:.0f} "
              f"| {append['seconds'] / build['seconds']:.3f} | {tail['tail_rows']:,}, {tail['p50_ms']:.1f} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    with reported():
        main()
