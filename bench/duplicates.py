"""Near-duplicate groups (`FeatureStore.duplicates`): time and peak RSS of the exact path and of the index's
range search, and what the range search misses.

    python bench/duplicates.py [--rows 200000] [--exact-rows 50000] [--dim 512] [--threshold 0.95] [--repeats 2]

Writes Parquet stores of clustered synthetic vectors (bench/index_search.py's mixture) with 1% of their rows
planted as near-copies of others (noise 0.02: cosine ~0.999), then in fresh processes (peak RSS is each
step's own; the fastest of --repeats):

- exact: `duplicates(T, exact=True)` on --exact-rows rows (blocked products over a memory-mapped copy; time
  grows with rows^2, so 10^6 rows costs (10^6 / rows)^2 times as much);
- index: `featurize index` (IVF ~2 sqrt(rows) lists, Flat codes, as chosen above 50,000 rows; timed apart), then `duplicates(T)` through the range search
  on --rows rows (~rows x nprobe/nlist x rows, and nlist ~ 2 sqrt(rows): 10^6 rows cost ~(10^6 / rows)^1.5
  times as much at the same nprobe);
- recall: on the --exact-rows store indexed too, the keys the range search groups against the exact groups.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.index_search import clustered_blocks, peak_rss_mib  # noqa: E402
from bench.search_memory import write_parquet  # noqa: E402
from machine import reported  # noqa: E402 - bench/ is not a package
import steps  # noqa: E402
from steps import fastest  # noqa: E402

PLANTED = 0.01


def planted_blocks(rows: int, dim: int):
    """clustered_blocks, with PLANTED of each block's rows replaced by near-copies of other rows of it."""
    rng = np.random.default_rng(5)
    for keys, matrix in clustered_blocks(rows, dim):
        copies = rng.choice(len(matrix), int(PLANTED * len(matrix)) * 2, replace=False).reshape(2, -1)
        matrix[copies[0]] = matrix[copies[1]] + 0.02 * rng.standard_normal((copies.shape[1], dim), dtype=np.float32)
        yield keys, matrix


def step(name: str, root: str, threshold: float) -> dict:
    from pipeline.store.feature_store import FeatureStore
    from pipeline.store.indexing import build_index

    store = FeatureStore.open(root)
    started = time.perf_counter()
    if name == "index":  # choose_factory's IVF, below its 50,000-row Flat threshold too: the range search is measured
        info = build_index(store, factory=f"IVF{round(2 * len(store) ** 0.5)},Flat")
        return {"seconds": time.perf_counter() - started, "factory": info.factory, "nprobe": info.search_value}
    found = store.duplicates(threshold, exact=name == "exact")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "method": found.method, "groups": found.groups, "keys": found.table.num_rows,
            "key_set": sorted(found.table["key"].to_pylist()) if len(store) <= 100_000 else None,
            "peak_rss_mib": peak_rss_mib()}


def run_step(name: str, root: Path, threshold: float, repeats: int = 1) -> dict:
    return fastest([steps.run_step(__file__, name, str(root), str(threshold), timeout_s=7200) for _ in range(repeats)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--exact-rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--step", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(args.step[0], args.step[1], float(args.step[2]))))
        return
    print(f"clustered float32 rows, dim {args.dim}, {PLANTED:.0%} planted near-copies, cosine >= {args.threshold}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; fastest of {args.repeats}\n")
    with tempfile.TemporaryDirectory() as scratch:
        small, large = Path(scratch) / "small", Path(scratch) / "large"
        write_parquet(small, args.exact_rows, args.dim, make_blocks=planted_blocks)
        write_parquet(large, args.rows, args.dim, make_blocks=planted_blocks)
        exact = run_step("exact", small, args.threshold, args.repeats)
        run_step("index", small, args.threshold)
        small_index = run_step("groups", small, args.threshold)
        built = run_step("index", large, args.threshold)
        ranged = run_step("groups", large, args.threshold, args.repeats)
    truth, found = set(exact["key_set"]), set(small_index["key_set"])
    print("| path | rows | index | seconds | peak RSS MiB | groups | keys grouped | 10^6 rows, extrapolated |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| exact | {args.exact_rows:,} | - | {exact['seconds']:.1f} | {exact['peak_rss_mib']:.0f} | {exact['groups']:,} "
          f"| {exact['keys']:,} | ~{exact['seconds'] * (1e6 / args.exact_rows) ** 2 / 3600:.1f} h |")
    print(f"| index | {args.rows:,} | {built['factory']}, nprobe {built['nprobe']} (built in {built['seconds']:.0f} s) "
          f"| {ranged['seconds']:.1f} | {ranged['peak_rss_mib']:.0f} | {ranged['groups']:,} | {ranged['keys']:,} "
          f"| ~{ranged['seconds'] * (1e6 / args.rows) ** 1.5 / 60:.0f} min |")
    print(f"\nrange search on the {args.exact_rows:,}-row store: {len(found & truth):,} of the {len(truth):,} keys the "
          f"exact path groups ({len(found & truth) / max(len(truth), 1):.4f}), {len(found - truth)} it groups that "
          f"the exact path does not; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    with reported():
        main()
