"""Resume planning and the manifest step on a filesystem with a fixed latency per call.

    python bench/journal_latency.py [--units 1000 10000] [--latency-ms 20] [--threads 32]
                                    [--workdir /tmp/featurize-journal-latency] [--before-limit-s 300]

An object store answers each request in tens of milliseconds; featurize reads one journal entry
per unit (resume planning: `journal.iter_committed_units`) and, in the manifest step
(`manifest.finalize_store`), every entry again and every Parquet shard's footer. This bench
writes stores of N committed units directly (fake journal entries and tiny Parquet feature
files, no model), then runs both operations through `slow://` (tests/helpers/slow_fs.py: Beam's
local filesystem plus `--latency-ms` on every call) before (one read at a time, `threads=1`,
as featurize read them until issue 18) and after (`--threads` reads in flight). A "before" whose
projected time (calls x latency) exceeds --before-limit-s is not run but estimated linearly
from the largest smaller N measured, and marked so.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from machine import reported  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the slow filesystem lives with the tests: one copy for both

from pipeline.elements import STAGES  # noqa: E402
from pipeline.files import READ_THREADS  # noqa: E402
from pipeline.job import journal  # noqa: E402
from pipeline.job.manifest import finalize_store  # noqa: E402
from pipeline.store.schema import FEATURES_DIR, UNITS_DIR  # noqa: E402
from tests.helpers import slow_fs  # noqa: E402

FINGERPRINT = {"backbone": "X", "outputs": {"embedding": 4}, "dtype": "float32"}
ROWS_PER_UNIT = 4


def build_store(path: Path, units: int) -> None:
    """`units` committed units as the journal and finalize see them: an entry and a feature file each."""
    marker = path / "complete"
    if marker.exists():
        return
    (path / UNITS_DIR).mkdir(parents=True, exist_ok=True)
    (path / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    table = pa.table({"key": [f"k{i}" for i in range(ROWS_PER_UNIT)],
                      "embedding": pa.array([[float(i)] * 4 for i in range(ROWS_PER_UNIT)], pa.list_(pa.float32(), 4))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    shard = buffer.getvalue()  # every unit's file holds the same rows: only the footer is read
    for index in range(units):
        unit = f"files-{index:016x}"
        features = f"{FEATURES_DIR}/{unit}.bench.parquet"
        (path / features).write_bytes(shard)
        entry = {"unit": unit, "layout": "files", "source": "", "inputs": ROWS_PER_UNIT, "rows": ROWS_PER_UNIT,
                 "errors": 0, "errors_by_stage": {stage: 0 for stage in STAGES}, "errors_by_type": {},
                 "error_examples": {}, "keys": [f"{unit}/{i}.jpg" for i in range(ROWS_PER_UNIT)],
                 "files": {"features": features}, "committed_at": "2026-12-01T00:00:00+00:00"}
        (path / UNITS_DIR / f"{unit}.json").write_text(json.dumps(entry, indent=2, sort_keys=True))
    marker.write_text("")


def timed(operation: str, output: str, units: int, threads: int, latency_s: float) -> tuple[float, dict]:
    slow_fs.configure(latency_s)
    start = time.perf_counter()
    if operation == "resume planning":
        found = sum(1 for _ in journal.iter_committed_units(output, threads))
    else:
        template = {"format": "parquet", "fingerprint": FINGERPRINT,
                    "counts": {"reused": 0, "skipped": 0, "removed": 0}}
        found = finalize_store(output, template, time.time(), threads=threads)["units"]["committed"]
    seconds = time.perf_counter() - start
    if found != units:
        raise RuntimeError(f"{operation} found {found} units, not {units}")
    return seconds, slow_fs.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--latency-ms", type=float, default=slow_fs.DEFAULT_LATENCY_S * 1000)
    parser.add_argument("--threads", type=int, default=READ_THREADS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/featurize-journal-latency"))
    parser.add_argument("--before-limit-s", type=float, default=300.0)
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    # calls per unit of each operation: one entry read; one entry read and one footer read
    per_unit_calls = {"resume planning": 1, "finalize": 2}
    measured_before: dict[str, tuple[int, float]] = {}
    rows = []
    for units in sorted(args.units):
        store = args.workdir / f"units-{units}"
        build_store(store, units)
        output = slow_fs.slow_path(str(store))
        for operation in ("resume planning", "finalize"):
            after, after_stats = timed(operation, output, units, args.threads, latency_s)
            projected = units * per_unit_calls[operation] * latency_s
            if projected > args.before_limit_s and operation in measured_before:
                small_units, small_seconds = measured_before[operation]
                before = small_seconds * units / small_units  # both are linear in units: calls x latency
                before_text = f"~{before:.1f} (est. from {small_units:,})"
            else:
                before, _ = timed(operation, output, units, 1, latency_s)
                measured_before[operation] = (units, before)
                before_text = f"{before:.1f}"
            rows.append((units, operation, before_text, after, before / after, after_stats))
            print(f"{units:,} {operation}: before {before_text} s, after {after:.1f} s "
                  f"({after_stats['calls']} calls, peak {after_stats['peak_in_flight']} in flight)", flush=True)
    print(f"\nlatency {args.latency_ms:g} ms per call, {args.threads} threads after\n")
    print("| units | operation | before s (sequential) | after s | speed-up | calls | peak in flight |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for units, operation, before_text, after, ratio, stats in rows:
        print(f"| {units:,} | {operation} | {before_text} | {after:.1f} | {ratio:.0f}x | {stats['calls']:,} "
              f"| {stats['peak_in_flight']} |")


if __name__ == "__main__":
    with reported():
        main()
