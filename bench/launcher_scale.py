"""How the launcher and the submitted job graph grow with the input (issue 18): a Dataflow dry run.

    python bench/launcher_scale.py [--repo PATH] [--cases files,tars,resume] [--files 10000,100000,1000000]
                                   [--flat] [--tars 1000,10000,100000] [--resume-units 10000] [--repeats 1]
                                   [--workdir /tmp/featurize-launcher-scale] [--timeout 1800]

Each measurement is one fresh `python bench/launcher_scale.py --one ...` with PYTHONPATH=--repo (default:
this checkout; `--repo /tmp/featurize-before` measures another copy). The child imports Beam and
`pipeline.job.launch` (the fixed floor: its peak RSS and seconds are reported apart), then times
`prepare` -> `upload_plan` (where the code has it) -> `build` -> `p.run()` of a Dataflow dry run
(flags of tests/helpers/dataflow.py: nothing is submitted), and reports that time, the process's
peak RSS (`ru_maxrss`) and `result.job.proto_pipeline.ByteSize()`. Fastest time and smallest RSS
of --repeats; ratios are to the smallest size of the same case.
Cases, generated once under --workdir (a `*.complete` marker beside each when whole):
  files   N empty .jpg files in 100 subfolders (--flat: one folder); the dry run only lists them.
  tars    N empty `shard-NNNNNN.tar` files, given as a glob.
  resume  2C tar shards and a store in which the first C are committed: a real `featurize run` on
          the first two (tiny real tars) gives store.json and a genuine entry; C-2 more entries
          are that one with its unit id, source and files (a rewritten feature file and key-hash
          file each) renamed; the manifest is removed (an interrupted run). Timed: `--resume`
          into a fresh copy of that store (one per repo: its identity is that repo's).
  files-resume  (not a dry run; this code only) the planner alone on each --files folder: planned
          fresh, then again with every other unit committed, as a --resume plans it: both times and
          the planner process's peak RSS.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from machine import reported  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
MARK = "LAUNCHER_SCALE "
MODEL = ["--model", "MobileNetV3Small", "--weights", "none", "--image-size", "32"]
MIB = 1024  # ru_maxrss is in KiB on Linux


def one(spec: dict) -> None:
    """The child: import, then time one dry-run launch; prints one JSON line."""
    start = time.perf_counter()
    import apache_beam as beam
    import pipeline
    from pipeline.job import launch
    imported, import_rss = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The flags come from the parent (tests/helpers/dataflow.py): --repo's checkout may predate that file.
    job = launch.prepare(["--input", spec["input"], "--output", spec["output"], *MODEL, *spec["flags"],
                          *spec["extra"]])
    # The local spill the listing sorted into (new launcher only), measured before it is released.
    workspace = getattr(getattr(getattr(job, "plan", None), "listing", None), "workspace", None)
    spill_bytes = folder_bytes(workspace) if workspace else None
    plan_bytes = None
    if hasattr(launch, "upload_plan"):  # the new launcher writes the plan into the store before build
        plan_bytes = folder_bytes(launch.upload_plan(job).folder)
    p = beam.Pipeline(options=job.options)
    launch.build(p, job)
    result = p.run()
    done = time.perf_counter()
    plan = getattr(job, "plan", None)  # best effort: a launcher that streams may hold no plan
    pending = getattr(plan, "pending", None)
    print(MARK + json.dumps({
        "module": pipeline.__file__, "import_s": imported - start, "import_rss_mib": import_rss / MIB,
        "launcher_s": done - imported, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB,
        "graph_bytes": result.job.proto_pipeline.ByteSize(), "plan_bytes": plan_bytes, "spill_bytes": spill_bytes,
        "pending": len(pending) if isinstance(pending, list) else None,
        "committed": len(plan.committed) if plan is not None and hasattr(plan, "committed") else None}), flush=True)


def one_files_resume(spec: dict) -> None:
    """The child of `files-resume` (this code only): plan a folder of files, then plan it again with
    every other unit committed, as a --resume does (journal entries as the writer makes them, with
    their keys, streamed from the first plan's files so the bench holds no more than featurize)."""
    from pipeline.inputs.listing import list_inputs, resolve_input
    from pipeline.job.units import plan_units

    listing = list_inputs(resolve_input(spec["input"]))
    started = time.perf_counter()
    first = plan_units(listing, (), 1000, 32)
    fresh = time.perf_counter() - started
    entries = ({"unit": record["unit"], "layout": "files", "source": record["source"], "retry": False,
                "inputs": len(record["members"]), "keys": [key for key, _ in record["members"]], "rejected": []}
               for index, record in enumerate(first.writer.records()) if index % 2)
    started = time.perf_counter()
    plan = plan_units(listing, entries, 1000, 32)
    print(MARK + json.dumps({"plan_s": fresh, "resume_plan_s": time.perf_counter() - started,
                             "pending": len(plan.pending), "reused": len(plan.reused_units),
                             "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB}), flush=True)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(top, name)) for top, _, names in os.walk(folder) for name in names)


# --- inputs ----------------------------------------------------------------------------------

def empty_files(folder: Path, names: list[str]) -> None:
    for name in names:  # os.open/close: a million Path.touch calls take several times longer
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))


def cached(path: Path, count: int, make) -> tuple[Path, float]:
    """`path`, made by `make(path)` unless its marker says it holds `count` already; seconds spent."""
    marker = path.with_name(path.name + ".complete")
    if marker.exists() and marker.read_text() == str(count):
        return path, 0.0
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    path.mkdir(parents=True)
    make(path)
    marker.write_text(str(count))
    return path, time.perf_counter() - start


def files_input(workdir: Path, n: int, flat: bool) -> tuple[Path, float]:
    def make(folder: Path) -> None:
        if flat:
            return empty_files(folder, [f"img-{i:07d}.jpg" for i in range(n)])
        for d in range(100):  # 100 subfolders: no single enormous directory
            (folder / f"d{d:02d}").mkdir()
            empty_files(folder / f"d{d:02d}", [f"img-{i:07d}.jpg" for i in range(d, n, 100)])
    return cached(workdir / f"files-{n}{'-flat' if flat else ''}", n, make)


def tars_input(workdir: Path, n: int) -> tuple[Path, float]:
    return cached(workdir / f"tars-{n}", n, lambda f: empty_files(f, [f"shard-{i:06d}.tar" for i in range(n)]))


def tiny_tar(path: Path, shard: int) -> None:
    from PIL import Image

    from tests.helpers.tars import write_tar

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shard * 90 % 256, 60, 120)).save(buffer, "JPEG")
    write_tar(path, [(f"{shard:06d}-000.jpg", buffer.getvalue())])  # WebDataset key `000000-000`: unique across shards


def resume_store(workdir: Path, c: int, repo: Path) -> tuple[Path, Path, float]:
    """(shard folder, store, seconds): 2C shards, the first C committed in a store made by `repo`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.job.dedupe import key_hashes, save_kept_keys
    from pipeline.job.units import shard_unit_id

    def make_shards(folder: Path) -> None:
        tiny_tar(folder / "shard-000000.tar", 0)
        tiny_tar(folder / "shard-000001.tar", 1)
        empty_files(folder, [f"shard-{i:06d}.tar" for i in range(2, 2 * c)])  # never opened by a dry run

    shards, seconds = cached(workdir / f"resume-{c}" / "shards", 2 * c, make_shards)
    tag = hashlib.sha1(str(repo).encode()).hexdigest()[:8]  # the store's identity is that repo's
    store = workdir / f"resume-{c}" / f"store-{tag}"
    marker = store.with_name(store.name + ".complete")
    if marker.exists() and marker.read_text() == f"{c} {repo}" and seconds == 0:
        return shards, store, 0.0
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--input", f"{shards}/shard-{{000000..000001}}.tar",
                    "--output", str(store), *MODEL, "--no-progress"], cwd=repo, check=True,
                   env=dict(os.environ, PYTHONPATH=str(repo)), stdout=subprocess.DEVNULL)
    units = store / "_featurize" / "units"
    real = {e["source"]: e for e in (json.loads(p.read_text()) for p in units.glob("*.json"))}
    for source, entry in real.items():  # our unit ids must be the tool's, or the resume would plan nothing
        if entry["unit"] != shard_unit_id("tar", source) or entry["errors"]:
            raise RuntimeError(f"real entry {entry['unit']} of {source}: not the expected id, or has errors")
    template = real[str(shards / "shard-000000.tar")]
    old_unit = template["unit"]
    old_stem = Path(template["files"]["features"]).name.rsplit(".", 1)[0]  # UNIT.ATTEMPT
    table = pq.read_table(store / template["files"]["features"])
    for i in range(2, c):
        source = str(shards / f"shard-{i:06d}.tar")
        unit = shard_unit_id("tar", source)
        stem = f"{unit}.{hashlib.sha1(unit.encode()).hexdigest()[:8]}"  # an attempt id of its own
        entry = copy.deepcopy(template)
        entry.update(unit=unit, source=source,
                     files={role: path.replace(old_stem, stem) for role, path in template["files"].items()})
        key = f"{i:06d}-000"
        rows = table.set_column(table.schema.get_field_index("key"), "key", pa.array([key]))
        rows = rows.set_column(rows.schema.get_field_index("uri"), "uri", pa.array([f"{source}#{key}.jpg"]))
        pq.write_table(rows.replace_schema_metadata(table.schema.metadata), store / entry["files"]["features"])
        save_kept_keys(str(store / entry["files"]["keys"]), key_hashes([key]))
        if set(entry["files"]) - {"features", "keys"} or old_unit in json.dumps(entry):
            raise RuntimeError(f"the template entry names {old_unit} somewhere this bench does not rewrite")
        (units / f"{unit}.json").write_text(json.dumps(entry, indent=2, sort_keys=True))
    (store / "manifest.json").unlink()  # an interrupted run: no manifest yet
    marker.write_text(f"{c} {repo}")
    return shards, store, seconds + time.perf_counter() - start


# --- measuring -------------------------------------------------------------------------------

def run_child(repo: Path, spec: dict, timeout: float, what: str) -> dict:
    """One fresh `--one` child running `repo`'s code; its JSON line."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)], cwd=repo,
                          env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not lines:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def measure(repo: Path, workdir: Path, input_: str, extra: list[str], template: Path | None,
            repeats: int, timeout: float) -> dict:
    """Fastest launcher time and smallest peak RSS over `repeats` fresh children."""
    from tests.helpers.dataflow import DATAFLOW_DRY_RUN

    runs = []
    output = workdir / "out"
    for _ in range(repeats):
        shutil.rmtree(output, ignore_errors=True)
        if template is not None:  # a resume may write into its store: always start from the same one
            shutil.copytree(template, output)
        spec = {"input": input_, "output": str(output), "flags": DATAFLOW_DRY_RUN, "extra": extra}
        run = run_child(repo, spec, timeout, f"dry run of {input_}")
        if not run["module"].startswith(str(repo) + "/"):
            raise RuntimeError(f"measured {run['module']}, not the code in {repo}")
        runs.append(run)
    best = dict(runs[0])
    for name in ("launcher_s", "rss_mib", "import_s", "import_rss_mib"):
        best[name] = min(run[name] for run in runs)
    return best


def megabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.2f}"


def files_resume(args: argparse.Namespace, repo: Path) -> None:
    """Planning a resume of each --files folder with half its units committed, in-process (no graph)."""
    print("| files | plan s (nothing committed) | resume plan s (half committed) | units pending / reused "
          "| planner peak RSS MiB |\n| --- | --- | --- | --- | --- |")
    for n in sorted(args.files):
        folder, _ = files_input(args.workdir, n, args.flat)
        runs = []
        for _ in range(args.repeats):
            runs.append(run_child(repo, {"files_resume": True, "input": str(folder)}, args.timeout,
                                  f"planning {folder}"))
        best = {name: min(run[name] for run in runs) for name in ("plan_s", "resume_plan_s", "rss_mib")}
        print(f"| {n:,} | {best['plan_s']:.1f} | {best['resume_plan_s']:.1f} | {runs[0]['pending']} / "
              f"{runs[0]['reused']} | {best['rss_mib']:,.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--cases", default="files,tars,resume",
                        help="any of files, tars, resume (Dataflow dry runs) and files-resume (planning only)")
    parser.add_argument("--files", type=sizes, default=[10000, 100000, 1000000])
    parser.add_argument("--flat", action="store_true", help="files in one folder, not 100 subfolders")
    parser.add_argument("--tars", type=sizes, default=[1000, 10000, 100000])
    parser.add_argument("--resume-units", type=sizes, default=[10000], help="committed units C (and C pending)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/featurize-launcher-scale"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per dry run")
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        return one_files_resume(spec) if spec.get("files_resume") else one(spec)
    # The parent uses this checkout's helpers (the children run --repo's code through PYTHONPATH).
    sys.path.insert(0, str(ROOT))
    repo, args.workdir = args.repo.resolve(), args.workdir.resolve()  # unit ids hash absolute paths
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, dict]] = []
    cases = args.cases.split(",")
    if "files-resume" in cases:
        cases.remove("files-resume")
        files_resume(args, repo)
    for case in cases:
        for n in sorted({"files": args.files, "tars": args.tars, "resume": args.resume_units}[case]):
            template, extra = None, []
            if case == "files":
                folder, made = files_input(args.workdir, n, args.flat)
                input_, inputs = str(folder), f"{n:,} files"
            elif case == "tars":
                folder, made = tars_input(args.workdir, n)
                input_, inputs = f"{folder}/*.tar", f"{n:,} shards"
            else:
                folder, template, made = resume_store(args.workdir, n, repo)
                input_, inputs, extra = f"{folder}/*.tar", f"{2 * n:,} shards, {n:,} committed", ["--resume"]
            if made:
                print(f"{case} {n:,}: inputs generated in {made:.1f} s", flush=True)
            run = measure(repo, args.workdir, input_, extra, template, args.repeats, args.timeout)
            if case == "resume" and not {run["committed"], run["pending"]} <= {None, n}:
                raise RuntimeError(f"the resume planned {run['committed']} committed and {run['pending']} "
                                   f"pending units, not {n} and {n}")
            rows.append((case, inputs, run))
            print(f"{case} {n:,}: {json.dumps(run)}", flush=True)
    shutil.rmtree(args.workdir / "out", ignore_errors=True)
    if not rows:
        return
    print(f"\n{repo}, Dataflow dry run, best of {args.repeats}\n")
    print("| case | inputs | pending units | graph MB | launcher peak RSS MiB | launcher s | plan MB | temp spill MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    first: dict[str, dict] = {}
    for case, inputs, run in rows:
        base = first.setdefault(case, run)
        ratio = lambda name: run[name] / base[name] if base[name] else float("nan")  # noqa: E731
        print(f"| {case} | {inputs} | {run['pending'] if run['pending'] is not None else '?'} "
              f"| {run['graph_bytes'] / 1e6:.2f} ({ratio('graph_bytes'):.1f}x) "
              f"| {run['rss_mib']:,.0f} ({ratio('rss_mib'):.2f}x) "
              f"| {run['launcher_s']:.1f} ({ratio('launcher_s'):.1f}x) | {megabytes(run['plan_bytes'])} "
              f"| {megabytes(run['spill_bytes'])} |")
    floor = [run["import_rss_mib"] for _, _, run in rows]
    seconds = [run["import_s"] for _, _, run in rows]
    print(f"\nBare imports (python + apache_beam + pipeline.job.launch, before prepare): peak RSS "
          f"{min(floor):.0f}-{max(floor):.0f} MiB, {min(seconds):.1f}-{max(seconds):.1f} s (not in launcher s).")


if __name__ == "__main__":
    with reported():
        main()
