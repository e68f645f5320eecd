"""Peak memory of featurize as the input grows: the whole process tree, sampled from /proc.

    python bench/memory_scale.py [--sizes 10000,100000,300000] [--shard-size 1000] [--repeats 1]
                                 [--workdir /tmp/featurize-memory-scale] [--timeout 1800]
                                 [--featurize-args "--direct_num_workers=2"]

Generates N tiny JPEGs (32x32, a pool of distinct images cycled under unique sample keys)
into WebDataset tar shards, cached per N under --workdir, then runs
`python -m pipeline run ... --model MobileNetV3Small --weights none --image-size 32` in its
own session and samples every 0.2 s the RSS of every process in it (launcher, Beam
workers, anything they start), summing over the tree at each sample (pages shared between
processes count once per process, as in PERFORMANCE.md's earlier numbers). Reports wall time,
images/s, the peak of that sum, its ratio to the smallest N, and the largest single
process. For the largest N it also times `--resume` on the finished output (nothing to
recompute) and on a run killed once half of its shards are committed.
Memory is the minimum over --repeats runs, wall time the fastest.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from machine import reported  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
POOL_SIZE = 1000
SAMPLE_EVERY_S = 0.2
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 2**20
FEATURIZE = ["-m", "pipeline", "run", "--model", "MobileNetV3Small", "--weights", "none", "--image-size", "32",
             "--batch-size", "64", "--no-progress"]


# --- dataset ---------------------------------------------------------------------------------

def jpeg_pool(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct 32x32 JPEGs of a few hundred bytes: upsampled colour noise, smooth like photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(count):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=75)
        pool.append(buffer.getvalue())
    return pool


def write_shard(path: Path, shard: int, first: int, count: int, pool: list[bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for index in range(first, first + count):
            data = pool[index % len(pool)]
            info = tarfile.TarInfo(f"{shard:06d}/sample_{index:09d}.jpg")
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))


def dataset(workdir: Path, images: int, shard_size: int) -> tuple[Path, float]:
    """WORKDIR/N/shard-*.tar, generated once per (N, shard size); returns the folder and seconds spent."""
    folder = workdir / str(images)
    recipe = {"images": images, "shard_size": shard_size, "pool": POOL_SIZE}
    stamp = folder / "dataset.json"
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        return folder, 0.0
    start = time.perf_counter()
    staging = workdir / f"{images}.partial"  # renamed into place only when complete
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    staging.mkdir(parents=True)
    pool = jpeg_pool(POOL_SIZE)
    for shard, first in enumerate(range(0, images, shard_size)):
        write_shard(staging / f"shard-{shard:06d}.tar", shard, first, min(shard_size, images - first), pool)
    (staging / "dataset.json").write_text(json.dumps(recipe))
    staging.rename(folder)
    return folder, time.perf_counter() - start


# --- process tree sampling -------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    session: int
    start_ticks: int
    rss_bytes: int
    cpu_ticks: int  # user + system, its own (not its children's)


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # exited between listing and reading
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # dead, holding no memory, waiting to be reaped
        return None
    # fields[0] is stat's field 3 (state): ppid 4, session 6, utime 14, stime 15, starttime 22, rss 24.
    return Proc(pid, int(fields[1]), int(fields[3]), int(fields[19]), int(fields[21]) * PAGE_BYTES,
                int(fields[11]) + int(fields[12]))


def tree(root: int) -> list[Proc]:
    """The root and its descendants: by parent links, and by session for orphans reparented to init."""
    procs = [p for p in map(read_proc, (int(d) for d in os.listdir("/proc") if d.isdigit())) if p]
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    found = {p.pid: p for p in procs if p.session == root}
    stack = [p for p in procs if p.pid == root]
    while stack:
        proc = stack.pop()
        found[proc.pid] = proc
        stack.extend(children.get(proc.pid, []))
    return list(found.values())


def role(pid: int, root: int) -> str:
    """launcher / worker / worker shell / a shortened command line."""
    if pid == root:
        return "launcher"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if any("sdk_worker_main" in a for a in argv):
        # Beam starts each local worker through `sh -c`: a shell of ~1 MiB per worker.
        return "worker shell" if os.path.basename(argv[0]) in ("sh", "bash", "dash") else "worker"
    return " ".join(os.path.basename(a) for a in argv if a)[:60]


@dataclass
class Sampled:
    wall_s: float
    peak_tree_mib: float
    processes: list[dict]  # every process seen: pid, role, peak_mib
    returncode: int | None
    timed_out: bool = False
    stopped: bool = False  # killed on purpose by stop_when
    cpu_s: float = 0.0  # the tree's CPU seconds, each process's as last sampled (its last < 0.2 s missed)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time.time(), the tree's CPU seconds so far)


RUNNING: subprocess.Popen | None = None  # the run being sampled: a signal handler may kill its group


def run_sampled(argv: list[str], log: Path, timeout_s: float,
                stop_when: Callable[[], bool] | None = None) -> Sampled:
    """Run argv in a new session, sampling the tree's RSS and CPU until it exits, times out or stop_when() holds."""
    global RUNNING
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(log, "wb") as out:
        start = time.perf_counter()
        RUNNING = child = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True, env=env)
    peak_tree, peaks, roles, cpu, samples = 0, {}, {}, {}, []
    timed_out = stopped = False
    while child.poll() is None:
        procs = tree(child.pid)
        peak_tree = max(peak_tree, sum(p.rss_bytes for p in procs))
        for proc in procs:
            key = (proc.pid, proc.start_ticks)  # a pid can be reused within one run
            peaks[key] = max(peaks.get(key, 0), proc.rss_bytes)
            cpu[key] = proc.cpu_ticks / CLK_TCK
            if key not in roles:
                roles[key] = role(proc.pid, child.pid)
        samples.append((time.time(), sum(cpu.values())))
        if stop_when and stop_when():
            stopped = True
        elif time.perf_counter() - start > timeout_s:
            timed_out = True
        if stopped or timed_out:
            os.killpg(child.pid, signal.SIGKILL)
            break
        try:
            child.wait(timeout=SAMPLE_EVERY_S)  # returns at exit, so the wall time is not rounded up to a tick
        except subprocess.TimeoutExpired:
            pass
    child.wait(timeout=60)
    wall = time.perf_counter() - start
    reap_leftovers(child.pid)
    RUNNING = None
    processes = [{"pid": pid, "role": roles[(pid, ticks)], "peak_mib": round(peak / MIB, 1)}
                 for (pid, ticks), peak in sorted(peaks.items())]
    return Sampled(wall, peak_tree / MIB, processes, child.returncode, timed_out, stopped, sum(cpu.values()), samples)


def reap_leftovers(session: int, grace_s: float = 10.0) -> None:
    """Workers still alive `grace_s` after their launcher would skew the next run: report and kill them."""
    deadline = time.monotonic() + grace_s
    while (left := [p.pid for p in tree(session)]) and time.monotonic() < deadline:
        time.sleep(0.1)  # killed or finishing processes take a moment to release their memory
    if left:
        print(f"  note: {len(left)} processes outlived the launcher ({left}); killing its process group")
        try:
            os.killpg(session, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- featurize runs --------------------------------------------------------------------------

@dataclass
class Run:
    label: str
    images: int
    wall_s: float
    peak_tree_mib: float
    largest_mib: float
    largest_role: str
    processes: list[dict]
    counts: dict


def featurize(label: str, images: int, shards: Path, out: Path, extra: list[str], timeout_s: float,
              stop_when: Callable[[], bool] | None = None) -> tuple[Run, Sampled]:
    """One featurize run, sampled; raises on a timeout or failure (not on a stop_when kill)."""
    argv = [sys.executable, *FEATURIZE, "--input", str(shards / "shard-*.tar"), "--output", str(out), *extra]
    log = out.parent / f"{out.name}.log"
    sampled = run_sampled(argv, log, timeout_s, stop_when)
    if sampled.timed_out:
        raise RuntimeError(f"{label} N={images} timed out after {timeout_s:g} s; killed its process group "
                           f"(log: {log})")
    if not sampled.stopped and sampled.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{label} N={images} exited {sampled.returncode}:\n{tail}\n(log: {log})")
    counts = {} if sampled.stopped else checked_counts(out, images)
    largest = max(sampled.processes, key=lambda p: p["peak_mib"])
    return Run(label, images, sampled.wall_s, sampled.peak_tree_mib, largest["peak_mib"], largest["role"],
               sampled.processes, counts), sampled


def checked_counts(out: Path, images: int) -> dict:
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    if counts["rows"] + counts["errors"] != images:
        raise RuntimeError(f"{out}: rows {counts['rows']} + errors {counts['errors']} != {images} inputs: {counts}")
    return counts


def fresh(out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def per_process(run: Run) -> str:
    return ", ".join(f"{p['role']} {p['peak_mib']:,.0f}" for p in run.processes)


def best_of(runs: list[Run]) -> Run:
    """Memory from the repeat with the lowest tree peak, wall time from the fastest repeat."""
    low = min(runs, key=lambda r: r.peak_tree_mib)
    return Run(low.label, low.images, min(r.wall_s for r in runs), low.peak_tree_mib, low.largest_mib,
               low.largest_role, low.processes, low.counts)


def resume_supported() -> bool:
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return "--resume" in done.stdout


def units_committed(units: Path) -> int:
    return len(list(units.glob("*.json")))


def resume_interrupted(images: int, shards: Path, shard_count: int, work: Path, units_dir: str, extra: list[str],
                       timeout_s: float) -> Run | str:
    """SIGKILL a fresh run once half its shards are committed, then --resume it; a string where skipped."""
    half = math.ceil(shard_count / 2)
    interrupted = fresh(work / "out" / f"interrupted-{images}")
    units = interrupted / units_dir
    _, sampled = featurize("interrupted", images, shards, interrupted, extra, timeout_s,
                           stop_when=lambda: units_committed(units) >= half)
    if not sampled.stopped:
        seen = f"held only {units_committed(units)} of {half} units" if units.is_dir() else "never appeared"
        return (f"resume (interrupted): skipped, {units} {seen}; the fresh run finished "
                f"in {sampled.wall_s:.1f} s before it could be killed")
    print(f"  killed the fresh run at {units_committed(units)}/{shard_count} units after {sampled.wall_s:.1f} s",
          flush=True)
    return featurize("resume (interrupted)", images, shards, interrupted, [*extra, "--resume"], timeout_s)[0]


def resume_runs(args: argparse.Namespace, images: int, extra: list[str]) -> tuple[list[Run | str], list[str]]:
    """The two resume rows for the largest N, and the failures met (each row fails on its own)."""
    if not resume_supported():
        return [f"resume ({kind}): not available, `featurize run` has no --resume"
                for kind in ("finished", "interrupted")], []
    shards = args.workdir / str(images)
    finished = args.workdir / "out" / f"full-{images}-{args.repeats - 1}"
    attempts = {
        "finished": lambda: featurize("resume (finished)", images, shards, finished, [*extra, "--resume"],
                                      args.timeout)[0],
        "interrupted": lambda: resume_interrupted(images, shards, math.ceil(images / args.shard_size), args.workdir,
                                                  args.units_dir, extra, args.timeout),
    }
    rows: list[Run | str] = []
    failures: list[str] = []
    for kind, attempt in attempts.items():
        try:
            rows.append(attempt())
        except RuntimeError as exc:  # keep the other rows; main() still exits non-zero
            failures.append(str(exc))
            rows.append(f"resume ({kind}): FAILED, {str(exc).splitlines()[0].rstrip(':')}")
    return rows, failures


# --- report ----------------------------------------------------------------------------------

HEADER = ("| run | N | wall s | images/s | peak RSS tree MiB | x smallest N | largest process MiB | processes "
          "| reused |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def table_row(run: Run | str, base_mib: float) -> str:
    if isinstance(run, str):
        label, _, note = run.partition(": ")
        return f"| {label} | {note} | | | | | | | |"
    return (f"| {run.label} | {run.images:,} | {run.wall_s:.1f} | {run.images / run.wall_s:,.0f} "
            f"| {run.peak_tree_mib:,.0f} | {run.peak_tree_mib / base_mib:.2f} "
            f"| {run.largest_mib:,.0f} ({run.largest_role}) | {len(run.processes)} "
            f"| {run.counts.get('reused', '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,300000", help="comma-separated image counts")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per tar shard")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/featurize-memory-scale"),
                        help="generated shards (kept for reruns) and outputs")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per featurize run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size: lowest peak, fastest wall")
    parser.add_argument("--units-dir", default="_featurize/units",
                        help="where an output keeps its committed work units (*.json), relative to it")
    parser.add_argument("--featurize-args", default="", help="extra `featurize run` arguments, one string")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    extra = shlex.split(args.featurize_args)

    runs: list[Run] = []
    for images in sizes:
        shards, seconds = dataset(args.workdir, images, args.shard_size)
        print(f"N={images:,}: " + (f"generated in {seconds:.1f} s" if seconds else "cached dataset"), flush=True)
        repeats = []
        for repeat in range(args.repeats):
            out = fresh(args.workdir / "out" / f"full-{images}-{repeat}")
            run, _ = featurize("full", images, shards, out, extra, args.timeout)
            print(f"  run {repeat + 1}: {run.wall_s:.1f} s, peak tree {run.peak_tree_mib:,.0f} MiB, "
                  f"per process MiB: {per_process(run)}", flush=True)
            repeats.append(run)
        runs.append(best_of(repeats))

    extras, failures = resume_runs(args, sizes[-1], extra)

    base = runs[0].peak_tree_mib
    print(f"\n{os.cpu_count()} cores; MobileNetV3Small, random weights, 32 px, batch 64; 32x32 JPEGs in tar shards "
          f"of {args.shard_size}; RSS summed over the process tree every {SAMPLE_EVERY_S} s; "
          f"memory: min over {args.repeats} repeat(s), wall: fastest\n")
    print(HEADER)
    for run in [*runs, *extras]:
        print(table_row(run, base))

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"memory_scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "cores": os.cpu_count(), "args": {**vars(args), "workdir": str(args.workdir)},
        "command": [*FEATURIZE, *extra], "memory": f"min over {args.repeats} repeats; wall: fastest",
        "runs": [asdict(r) if isinstance(r, Run) else {"note": r} for r in [*runs, *extras]],
    }, indent=2))
    print(f"\nwrote {path}")
    if failures:
        sys.exit("\n\n".join(failures))


if __name__ == "__main__":
    with reported():
        main()
