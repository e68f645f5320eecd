"""GPU check: the model alone against featurize end to end, on one accelerator, in under 8 minutes.

    bash bench/gpu_check.sh                 # on the GPU machine (the wrapper caps it at 470 s)
    python bench/gpu_check.py [--images 1024] [--batch-size 128] [--repeats 2] [--budget 440]
    bash bench/gpu_check.sh --cpu-smoke     # the same code paths on a CPU, small sizes, 1-1.5 minutes

For ResNet50 and MobileNetV3Small at 224 px, in float32 and `--precision mixed_float16`:

  model-only        images/s of the model as featurize's workers build it (`load_feature_model`:
                    preprocessing folded in, one compiled batch shape, the same thread caps) on an
                    in-memory uint8 batch; warmed up, fastest of 3 timed rounds. Measured in a
                    subprocess that exits before featurize starts, so it holds no GPU memory then.
  featurize         `python -m pipeline run` end to end in a subprocess: local runner, one worker
                    process (`--direct_running_mode=multi_processing --direct_num_workers=1`, what
                    the README says for one GPU), WebDataset tar shards of ImageNet-like JPEGs
                    (500x375 crops of scikit-image's bundled real photos, bench/host_cost.py),
                    Parquet out. Steady rate by differencing N and 2N images so start-up cancels,
                    each size the fastest of --repeats runs; also the rate between the first and
                    the last unit commit of the 2N run (a second, start-up-free estimate).
  CPU cores busy    CPU seconds of the whole process tree (launcher, Beam worker, their children;
                    /proc sampled every 0.2 s, and the kernel's rusage of reaped children), over the
                    differenced window: (cpu(2N) - cpu(N)) / (wall(2N) - wall(N)); per image as ms.

Weights are random (`--weights none`: the GPU machine has no network, and speed does not depend
on weight values). JPEGs and shards are generated once, in parallel, and reused by every case.
A time budget (--budget, from the script's start) skips runs that would not fit, so the table
is always printed. Exits 3 when the backend sees no GPU (unless --cpu-smoke), 1 when a run
failed. Output: a Markdown table on stdout, and JSON + Markdown under $OUT if set, else
bench/results/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from machine import reported  # noqa: E402 - bench/ is not a package

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from host_cost import HEIGHT, WIDTH, make_photo_jpegs  # noqa: E402
import memory_scale  # noqa: E402
from memory_scale import checked_counts, write_shard  # noqa: E402
from pipeline.store.schema import UNITS_DIR  # noqa: E402

MODELS = ("ResNet50", "MobileNetV3Small")
PRECISIONS = ("float32", "mixed_float16")
NO_GPU_EXIT = 3
TARGET = 0.9  # issue #18: end to end >= 0.9x model-only


# --- inputs ----------------------------------------------------------------------------------

def _photo_part(job: tuple[str, int, int]) -> list[str]:
    folder, count, seed = job
    return [str(p) for p in make_photo_jpegs(Path(folder), count, seed=seed)]


def make_pool(root: Path, count: int) -> tuple[list[bytes], str]:
    """`count` distinct JPEGs as bytes, generated in parallel; and what they are, in words."""
    if importlib.util.find_spec("skimage") is None:  # the real photos make_photo_jpegs cuts from
        from throughput import make_jpegs

        paths = make_jpegs(root / "synthetic", count)
        return [p.read_bytes() for p in paths], "SYNTHETIC JPEGs 320x240..1600x1200 (scikit-image missing)"
    workers = max(1, min(os.cpu_count() or 1, math.ceil(count / 64)))
    sizes = [count // workers + (1 if k < count % workers else 0) for k in range(workers)]
    jobs = [(str(root / f"part{k:02d}"), n, k) for k, n in enumerate(sizes) if n]
    if len(jobs) == 1:
        parts = [_photo_part(jobs[0])]
    else:
        with ProcessPoolExecutor(len(jobs)) as pool:
            parts = list(pool.map(_photo_part, jobs))
    return [Path(p).read_bytes() for part in parts for p in part], \
        f"real-photo JPEGs {WIDTH}x{HEIGHT} (scikit-image's photos, q95 4:4:4)"


def make_shards(work: Path, pool: list[bytes], images: int, shard_size: int) -> dict[int, Path]:
    """{N: folder of the shards holding the first N images, 2N: folder of all 2N}; shards hard-linked."""
    full, half = work / "shards-2n", work / "shards-n"
    full.mkdir(parents=True)
    half.mkdir()
    for shard, first in enumerate(range(0, 2 * images, shard_size)):
        path = full / f"shard-{shard:06d}.tar"
        write_shard(path, shard, first, shard_size, pool)
        if first < images:
            os.link(path, half / path.name)
    return {images: half, 2 * images: full}


# --- running featurize, the process tree sampled ---------------------------------------------

@dataclass
class Sampled:
    wall_s: float
    cpu_s: float
    samples: list[tuple[float, float]]  # (time.time(), CPU seconds of the tree so far)
    peak_rss_mib: float
    processes: int
    returncode: int | None
    timed_out: bool
    cpu_sources: dict  # {"sampled": s, "reaped": s}: the two counts total takes the larger of


def run_sampled(argv: list[str], log: Path, timeout_s: float) -> Sampled:
    """memory_scale.run_sampled, its CPU count checked against the rusage of the children it reaped."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampled = memory_scale.run_sampled(argv, log, timeout_s)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # Sampling misses each process's last < 0.2 s; rusage misses processes nobody waited for.
    total = max(sampled.cpu_s, reaped)
    return Sampled(sampled.wall_s, total, [*sampled.samples, (time.time(), total)], sampled.peak_tree_mib,
                   len(sampled.processes), sampled.returncode, sampled.timed_out,
                   {"sampled": sampled.cpu_s, "reaped": reaped})


@dataclass
class Run:
    images: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    processes: int
    commit_rate: float | None  # images/s between the first and the last unit commit
    commit_cores: float | None  # CPU cores busy over that window
    stages: dict
    cpu_sources: dict


def commit_window(out: Path) -> tuple[float, float, int] | None:
    """(first commit, last commit, images committed after the first) from the journal entries' mtimes."""
    entries = sorted((p.stat().st_mtime, json.loads(p.read_text()).get("inputs", 0))
                     for p in (out / UNITS_DIR).glob("*.json"))
    if len(entries) < 2 or entries[-1][0] <= entries[0][0]:
        return None
    return entries[0][0], entries[-1][0], sum(n for _, n in entries[1:])


def featurize_run(case: "Case", images: int, shards: Path, work: Path, args: argparse.Namespace,
                  timeout_s: float, tag: str) -> Run:
    out = work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "pipeline", "run", "--input", str(shards / "shard-*.tar"), "--output", str(out),
            "--model", case.model, "--weights", "none", "--image-size", str(args.size),
            "--batch-size", str(args.batch_size), "--precision", case.precision,
            "--keras-backend", args.keras_backend, "--no-progress",
            "--direct_running_mode=multi_processing", "--direct_num_workers=1", *args.featurize_args]
    log = work / f"{tag}.log"
    sampled = run_sampled(argv, log, timeout_s)
    if sampled.timed_out or sampled.returncode != 0:
        why = f"timed out after {timeout_s:.0f} s" if sampled.timed_out else f"exited {sampled.returncode}"
        tail = log.read_text(errors="replace")[-2500:]
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        raise RuntimeError(f"featurize {case.label} N={images} {why}: {last}\n{tail}")
    counts = checked_counts(out, images)
    if counts.get("errors"):
        raise RuntimeError(f"featurize {case.label} N={images}: {counts['errors']} error rows: {counts}")
    window = commit_window(out)
    commit_rate = commit_cores = None
    if window:
        first, last, committed = window
        times, cpus = np.array([s[0] for s in sampled.samples]), np.array([s[1] for s in sampled.samples])
        commit_rate = committed / (last - first)
        commit_cores = float(np.interp(last, times, cpus) - np.interp(first, times, cpus)) / (last - first)
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest.get("metrics", {}).get("stages", {})
    shutil.rmtree(out, ignore_errors=True)
    return Run(images, sampled.wall_s, sampled.cpu_s, sampled.peak_rss_mib, sampled.processes,
               commit_rate, commit_cores, stages, sampled.cpu_sources)


# --- the model alone (in a subprocess) -------------------------------------------------------

def model_only_main(args: argparse.Namespace) -> int:
    """In a child process: check the backend sees a GPU, then time each case's model; JSON to a file."""
    os.environ["KERAS_BACKEND"] = args.keras_backend
    from pipeline.model.runtime import limit_threads, load_feature_model, tensorflow_without_jax
    from pipeline.model.spec import ModelSpec

    threads = os.cpu_count() or 1  # what `featurize run` gives its one local worker
    report: dict = {"backend": args.keras_backend}
    if args.keras_backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        report["gpus"] = [str(d) for d in gpus]
        report["device_name"] = gpus[0].device_kind if gpus else None
        report["versions"] = f"JAX {jax.__version__}"
    else:
        with tensorflow_without_jax():
            limit_threads(threads)
            import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        report["gpus"] = [g.name for g in gpus]
        report["device_name"] = (tf.config.experimental.get_device_details(gpus[0]).get("device_name")
                                 if gpus else None)
        report["versions"] = f"TensorFlow {tf.__version__}"
    import keras

    report["versions"] += f", Keras {keras.__version__}"
    if not gpus and not args.cpu_smoke:
        Path(args.model_only_out).write_text(json.dumps(report))
        return NO_GPU_EXIT
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (args.batch_size, args.size, args.size, 3), dtype=np.uint8) for _ in range(2)]
    rates = {}
    for case in cases(args):
        spec = ModelSpec(case.model, (args.size, args.size), None, precision=case.precision)
        model = load_feature_model(spec, args.batch_size, keras_backend=args.keras_backend,
                                   intra_op_threads=threads)
        for pixels in batches * 2:  # warm-up beyond the build's own first call
            model(pixels)
        best = 0.0
        for _ in range(3):
            calls, start = 0, time.perf_counter()
            while True:
                model(batches[calls % 2])  # returns NumPy arrays: synchronised with the device
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= args.model_seconds and calls >= 3:
                    break
            best = max(best, calls * args.batch_size / elapsed)
        rates[case.label] = best
        print(f"  model-only {case.label}: {best:,.0f} img/s", flush=True)
        del model
        keras.backend.clear_session()
    report["rates"] = rates
    Path(args.model_only_out).write_text(json.dumps(report))
    return 0


def model_only(args: argparse.Namespace, work: Path, timeout_s: float) -> tuple[int, dict]:
    out = work / "model_only.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--model-only-out", str(out), *sys.argv[1:]]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, timeout=timeout_s, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return 1, {"error": f"model-only timed out after {timeout_s:.0f} s:\n{output[-3000:]}"}
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith("  model-only")), flush=True)
    if not out.exists():
        return done.returncode or 1, {"error": done.stdout[-3000:]}
    return done.returncode, json.loads(out.read_text())


# --- cases, results, the table ---------------------------------------------------------------

@dataclass
class Case:
    model: str
    precision: str
    runs: dict[int, list[Run]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} {self.precision}"

    def summary(self, images: int, model_rate: float | None) -> dict:
        small, large = self.runs.get(images), self.runs.get(2 * images)
        row: dict = {"model": self.model, "precision": self.precision, "model_only": model_rate,
                     "repeats": [len(small or []), len(large or [])], "notes": self.notes}
        if not small or not large:
            return row
        fast_n, fast_2n = min(small, key=lambda r: r.wall_s), min(large, key=lambda r: r.wall_s)
        dwall, dcpu = fast_2n.wall_s - fast_n.wall_s, fast_2n.cpu_s - fast_n.cpu_s
        committed = [r for r in large if r.commit_rate]
        best_commit = max(committed, key=lambda r: r.commit_rate) if committed else None
        row.update({
            "wall_s": [fast_n.wall_s, fast_2n.wall_s], "cpu_s": [fast_n.cpu_s, fast_2n.cpu_s],
            "steady": images / dwall if dwall > 0 else None,
            "commit_rate": best_commit.commit_rate if best_commit else None,
            "commit_cores": best_commit.commit_cores if best_commit else None,
            "cores": dcpu / dwall if dwall > 0 else None,
            "cpu_ms": dcpu * 1000 / images if dwall > 0 else None,
            "startup_s": fast_n.wall_s - dwall if dwall > 0 else None,
            "peak_rss_mib": max(r.peak_rss_mib for r in large),
            "stages_2n": fast_2n.stages,
            "infer_rate": (fast_2n.stages.get("infer") or {}).get("images_per_s"),
        })
        if dwall <= 0:
            row["notes"] = [*self.notes, f"the 2N run was not slower than the N run ({fast_2n.wall_s:.1f} s vs "
                                         f"{fast_n.wall_s:.1f} s): start-up jitter exceeds N images' work; "
                                         f"raise --images or --repeats"]
        if row["steady"] and model_rate:
            row["ratio"] = row["steady"] / model_rate
        return row


def cases(args: argparse.Namespace) -> list[Case]:
    return [Case(m, p) for m in args.models for p in args.precisions]


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, fmt)


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        f"**{meta['card']}**; {meta['cores']} CPU cores; {meta['versions']}; "
        f"model input {meta['size']}x{meta['size']}, batch {meta['batch']}, "
        f"random weights (`--weights none`: speed does not depend on weight values)"
        f"{'' if meta['backend'] == 'tensorflow' else ', `--keras-backend ' + meta['backend'] + '`'}.",
        f"featurize: `python -m pipeline run` on the local runner with one worker process "
        f"(`--direct_running_mode=multi_processing --direct_num_workers=1`), {meta['jpegs']}, mean "
        f"{meta['mean_kb']:.0f} KB, in tar shards of {meta['shard_size']}, Parquet out; steady rate by differencing "
        f"N={meta['images']:,} and 2N images (each the fastest of up to {meta['repeats']} runs); CPU: the whole "
        f"process tree over the same window. Unit commits: images/s between the 2N run's first and last unit "
        f"commit; infer stage: its model calls alone (featurize's metrics). Model-only: the workers' model "
        f"on an in-memory uint8 batch.",
        "",
        "| model | precision | model-only img/s | featurize img/s (N vs 2N) | featurize / model-only "
        "| featurize img/s (unit commits) | its infer stage img/s | CPU cores busy | CPU ms / image | start-up s "
        "| runs N+2N |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = row.get("ratio")
        lines.append(
            f"| {row['model']} | {row['precision']} | {_num(row['model_only'])} | {_num(row.get('steady'))} "
            f"| {_num(ratio, '.2f')}{' (below target)' if ratio is not None and ratio < TARGET else ''} "
            f"| {_num(row.get('commit_rate'))} | {_num(row.get('infer_rate'))} | {_num(row.get('cores'), '.2f')} "
            f"| {_num(row.get('cpu_ms'), '.2f')} "
            f"| {_num(row.get('startup_s'), '.1f')} | {row['repeats'][0]}+{row['repeats'][1]} |")
    met = [r for r in rows if r.get("ratio") is not None and r["ratio"] >= TARGET]
    measured = [r for r in rows if r.get("ratio") is not None]
    lines += ["", f"Target end to end >= {TARGET}x model-only: met by {len(met)} of {len(measured)} measured cases."]
    for row in rows:
        for note in row["notes"]:
            lines.append(f"- {row['model']} {row['precision']}: {note}")
    return "\n".join(lines)


def gpu_name() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    if not first:
        return None
    name, _, rest = first.partition(",")
    driver, _, memory = rest.partition(",")
    return f"{name.strip()} ({memory.strip()}, driver {driver.strip()})"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def results_dir() -> Path:
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(stamp: str, report: dict, markdown: str) -> Path:
    folder = results_dir()
    (folder / f"gpu_check-{stamp}.md").write_text(markdown + "\n")
    path = folder / f"gpu_check-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="N: featurize runs on N and 2N images")
    parser.add_argument("--size", type=int, default=224, help="model input, pixels a side")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=256, help="images per tar shard (must divide N)")
    parser.add_argument("--repeats", type=int, default=2, help="featurize runs per size while the budget lasts; "
                                                              "the fastest counts")
    parser.add_argument("--model-seconds", type=float, default=1.0, help="each of 3 model-only timing rounds")
    parser.add_argument("--budget", type=float, default=440, help="seconds for the whole script; runs that "
                                                                 "would not fit are skipped")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=list(PRECISIONS))
    parser.add_argument("--keras-backend", choices=["tensorflow", "jax"], default="tensorflow")
    parser.add_argument("--featurize-args", type=str, default="", help="extra `featurize run` flags, one string")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="no GPU needed: 64 px, N=512, MobileNetV3Small float32, batch 32, shards of 128")
    parser.add_argument("--model-only-out", help=argparse.SUPPRESS)  # set for the model-only child process
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        # 512 more images than N: a second of decoding on a small CPU, above the start-up's jitter.
        args.size, args.images, args.batch_size, args.shard_size = 64, 512, 32, 128
        args.models, args.precisions, args.repeats, args.model_seconds = ["MobileNetV3Small"], ["float32"], 2, 0.5
    args.featurize_args = shlex.split(args.featurize_args)
    if args.images % args.shard_size:
        parser.error(f"--shard-size {args.shard_size} must divide --images {args.images}")
    return args


def _terminate(signum, frame):  # noqa: ARG001 - the wrapper's timeout: take the featurize run down too
    child = memory_scale.RUNNING
    if child is not None and child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def main() -> int:
    started = time.perf_counter()
    args = parse_args()
    if args.model_only_out:
        return model_only_main(args)
    signal.signal(signal.SIGTERM, _terminate)
    deadline = started + args.budget
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="featurize-gpu-check-"))
    all_cases = cases(args)
    failures: list[str] = []
    try:
        card = gpu_name()
        print(f"card: {card or 'no nvidia-smi answer'}; {os.cpu_count()} cores; work dir {work}", flush=True)
        t0 = time.perf_counter()
        code, model_report = model_only(args, work, max(30.0, deadline - time.perf_counter() - 60))
        print(f"model-only phase: {time.perf_counter() - t0:.1f} s", flush=True)
        if code == NO_GPU_EXIT:
            print(f"NO GPU: {args.keras_backend} sees no GPU (devices: {model_report.get('gpus')}); this check is "
                  f"for the GPU machine. Use --cpu-smoke to exercise it on a CPU.", file=sys.stderr)
            return NO_GPU_EXIT
        if code != 0:
            print(f"model-only phase failed (exit {code}): {model_report.get('error', '')}", file=sys.stderr)
            return 1
        rates = model_report["rates"]
        if args.cpu_smoke:
            card = f"CPU smoke, no GPU: {cpu_name()}"
        elif not card:
            card = model_report.get("device_name") or "unknown GPU"

        t0 = time.perf_counter()
        pool, jpegs = make_pool(work / "jpegs", 2 * args.images)
        shards = make_shards(work, pool, args.images, args.shard_size)
        shutil.rmtree(work / "jpegs", ignore_errors=True)
        mean_kb = float(np.mean([len(p) for p in pool])) / 1000
        print(f"inputs: {len(pool):,} {jpegs}, mean {mean_kb:.0f} KB, {2 * args.images // args.shard_size} shards "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        del pool

        meta = {"card": card, "backend": args.keras_backend, "cores": os.cpu_count(),
                "versions": model_report.get("versions", ""), "size": args.size, "batch": args.batch_size,
                "jpegs": jpegs, "mean_kb": mean_kb, "shard_size": args.shard_size, "images": args.images,
                "repeats": args.repeats}

        def estimate(case: Case, images: int) -> float:
            """Seconds a run should take: this case's last at this size, else the slowest seen at it, else 90."""
            if case.runs.get(images):
                return case.runs[images][-1].wall_s
            seen = [r.wall_s for c in all_cases for r in c.runs.get(images, [])]
            return max(seen) if seen else 90.0

        def save() -> tuple[str, Path]:
            rows = [c.summary(args.images, rates.get(c.label)) for c in all_cases]
            markdown = table(rows, meta)
            return markdown, write_results(stamp, {
                "meta": meta, "args": vars(args), "rows": rows, "model_only": model_report, "failures": failures,
                "runs": {c.label: {n: [asdict(r) for r in rs] for n, rs in c.runs.items()} for c in all_cases},
                "elapsed_s": time.perf_counter() - started}, markdown)

        for repeat in range(args.repeats):
            for case in all_cases:
                if any("FAILED" in n for n in case.notes):
                    continue
                for images in (args.images, 2 * args.images):
                    left = deadline - time.perf_counter()
                    need = estimate(case, images) * 1.2 + 10  # the run, a margin, reaping
                    if need > left:
                        if repeat == 0:  # later repeats show in the runs column
                            case.notes.append(f"N={images:,} skipped: ~{need:.0f} s needed, {max(left, 0):.0f} s "
                                              f"of the --budget left")
                        continue
                    # A hung run must not eat every later case's time.
                    timeout_s = min(left - 5, max(180.0, 3 * estimate(case, images)))
                    try:
                        run = featurize_run(case, images, shards[images], work, args, timeout_s=timeout_s,
                                            tag=f"{case.model}-{case.precision}-{images}-{repeat}")
                    except RuntimeError as exc:
                        failures.append(str(exc))
                        case.notes.append("FAILED: " + str(exc).splitlines()[0])
                        print(str(exc), file=sys.stderr, flush=True)
                        break
                    case.runs.setdefault(images, []).append(run)
                    print(f"  featurize {case.label} N={images:,} run {repeat + 1}: {run.wall_s:.1f} s wall, "
                          f"{run.cpu_s:.1f} CPU s, commits {_num(run.commit_rate)} img/s "
                          f"[{time.perf_counter() - started:.0f} s elapsed]", flush=True)
                save()  # after every case: a run killed later still leaves what it measured

        markdown, path = save()
        print()
        print(markdown)
        print(f"\n{time.perf_counter() - started:.0f} s in all; wrote {path} (and .md)")
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        status = main()
    sys.exit(status)
