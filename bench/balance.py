"""Work balance on the local runner: how long, near the end of a run, fewer workers are busy than there are.

    python bench/balance.py [--images 960] [--repeats 2] [--workers 2]

Two inputs of uneven sizes, photo-like JPEGs 320x240 to 1600x1200 (bench/throughput.py's):
  folder  N files of five sizes in one folder (featurize cuts it into units of equal counts; the bytes differ)
  tars    N images in 16 tar shards: 2 of N/4 images each and 14 of N/28 (a dataset's few large classes)
each run with featurize's defaults (Beam's local runner, one worker process per core, MobileNetV3Small,
random weights, 224 px) two ways:
  handout  units taken by the workers as they free up (pipeline/job/handout.py, the default)
  static   Beam's own split: the stage's units cut into one fixed part per worker before it starts
           (the default before handout; here by turning the handout off in the launcher)

From the journal (each unit's worker, started_at and committed_at):
  span   first unit started -> last unit committed (start-up before it is not balance: see start-up)
  tail   the last worker's finish - the first worker to finish its last unit: the end where workers idle
  idle   seconds within the span with fewer units running than workers (the head included: a worker that
         loads its model later starts later), as a share of the span
Each worker loads its model inside its first unit, so the span includes that. Every run is a row (which
units Beam's split gives each worker varies from run to run). The issue's target: tail <= 10% of the run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path

from machine import reported  # noqa: E402 - bench/ is not a package
from throughput import make_jpegs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARD_PARTS = [7, 7] + [1] * 14  # parts of N / 28 images
# The static split, as Beam does it: the launcher never sets up a handout.
STATIC = "import pipeline.job.launch as l; l.local_parallelism = lambda options: 0; from pipeline.cli import main; main()"


def make_inputs(work: Path, images: int) -> tuple[Path, Path]:
    folder = work / "folder"
    paths = make_jpegs(folder, images)
    tars = work / "tars"
    tars.mkdir()
    part = max(1, images // sum(SHARD_PARTS))
    start = 0
    for shard, parts in enumerate(SHARD_PARTS):
        with tarfile.open(tars / f"shard-{shard:06d}.tar", "w") as tar:
            for path in paths[start:start + parts * part]:
                data = path.read_bytes()
                info = tarfile.TarInfo(f"{path.stem}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        start += parts * part
    return folder, tars


def featurize(mode: str, source: str, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    code = STATIC if mode == "static" else "from pipeline.cli import main; main()"
    argv = [sys.executable, "-c", code, "run", "--input", source, "--output", str(out), "--model", "MobileNetV3Small",
            "--weights", "none", "--image-size", "224", "--no-progress", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}"]
    started = datetime.now().timestamp()
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return datetime.now().timestamp() - started


def timeline(out: Path) -> dict[str, float]:
    """span, tail and idle (seconds) from the units' journal entries."""
    intervals: dict[str, list[tuple[float, float]]] = {}
    for path in (out / "_featurize" / "units").glob("*.json"):
        entry = json.loads(path.read_text())
        start = datetime.fromisoformat(entry["started_at"]).timestamp()
        end = datetime.fromisoformat(entry["committed_at"]).timestamp()
        intervals.setdefault(entry["worker"], []).append((start, end))
    workers = len(intervals)
    first = min(s for spans in intervals.values() for s, _ in spans)
    last = max(e for spans in intervals.values() for _, e in spans)
    finishes = sorted(max(e for _, e in spans) for spans in intervals.values())
    events = sorted([(s, 1) for spans in intervals.values() for s, _ in spans]
                    + [(e, -1) for spans in intervals.values() for _, e in spans])
    idle, running, previous = 0.0, 0, first
    for moment, change in events:
        if running < workers:
            idle += moment - previous
        running, previous = running + change, moment
    return {"span": last - first, "tail": last - finishes[0], "idle": idle, "workers": workers,
            "units": sum(len(spans) for spans in intervals.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=960)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each input and mode, alternated")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featurize-balance-"))
    try:
        folder, tars = make_inputs(work, args.images)
        inputs = {"folder": str(folder), "tars": str(tars / "shard-*.tar")}
        rows = []
        for _ in range(args.repeats):
            for name, source in inputs.items():
                for mode in ("static", "handout"):  # alternated: the machine's load moves both alike
                    wall = featurize(mode, source, work / "out", args.workers)
                    rows.append((name, mode, {**timeline(work / "out"), "wall": wall, "load": os.getloadavg()[0]}))
        print(f"\n{args.images} images, {args.workers} workers, MobileNetV3Small 224 px; {args.repeats} alternated "
              f"runs each\n")
        print("| input | mode | units | wall s | span s | tail s | tail / span | idle / span | load (1 min) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, mode, f in sorted(rows, key=lambda row: (row[0], row[1])):
            print(f"| {name} | {mode} | {f['units']} | {f['wall']:.1f} | {f['span']:.1f} | {f['tail']:.1f} | "
                  f"{f['tail'] / f['span']:.0%} | {f['idle'] / f['span']:.0%} | {f['load']:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
