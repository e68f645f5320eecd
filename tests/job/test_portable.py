"""A real cluster run: PortableRunner -> Beam's job service -> a separate worker pool on localhost.

The worker pool boots each worker with tools/beam_boot.py, which fetches the job's staged
artifacts and pip-installs the `--setup_file` sdist into a private folder; the tests prove
the worker imported `pipeline` from there (not from the checkout, not from site-packages)
and check every output row as the local end-to-end tests do, for Parquet and HDF5.
"""
import functools
import glob
import http.server
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import sysconfig
import threading
import time

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store.schema import FINGERPRINT_KEY
from pipeline.store.feature_store import FeatureStore
from tests.helpers.runs import TEST_MODEL, TEST_SIZE, check_metrics_match_counts
from tests.helpers.portable import REPO, LocalCluster, free_port, run_bounded
from tests.helpers.servers import serving
from tests.helpers.samples import BOMB_MAX_PIXELS

SUBMIT_TIMEOUT_S = 600  # a worker that cannot start hangs a job ~300 s: fail with the logs instead


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from serving(LocalCluster(tmp_path_factory.mktemp("cluster")), "the cluster")


@pytest.fixture(scope="module")
def expected(zoo_samples, small_weights):
    """{name: embedding} computed in this process, straight from the model (the reference for every row)."""
    from pipeline.model.runtime import build_feature_model
    from pipeline.model.spec import ModelSpec
    from pipeline.images import DecodeSpec, decode_image

    valid = [s for s in zoo_samples if s.valid]
    spec = DecodeSpec(TEST_SIZE, TEST_SIZE, max_pixels=BOMB_MAX_PIXELS)
    model = build_feature_model(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights), batch_size=8)
    pixels = np.stack([decode_image(s.data, spec)[0] for s in valid])
    return dict(zip([s.name for s in valid], np.asarray(model(pixels)["embedding"], dtype=np.float32)))


def relative_l2(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-30)


def feature_rows(out: pathlib.Path, fmt: str):
    """(rows as dicts with key/width/height/embedding, the fingerprint stored in the data files)."""
    if fmt == "parquet":
        files = sorted(glob.glob(f"{out}/features/files-*.parquet"))
        assert files, files
        table = pa.concat_tables([pq.read_table(f) for f in files])
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 576)
        stored = json.loads(pq.ParquetFile(files[0]).schema_arrow.metadata[FINGERPRINT_KEY])
        rows = table.to_pylist()
        for row in rows:
            row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
        return rows, stored
    shards = sorted(glob.glob(f"{out}/features/files-*.h5"))
    assert shards, shards
    with h5py.File(out / "features.h5", "r") as f:
        assert f["embedding"].is_virtual and f["embedding"].dtype == np.float32
        keys, widths, heights = list(f["key"].asstr()[:]), f["width"][:], f["height"][:]
        matrix = f["embedding"][:]
        stored = json.loads(f.attrs["featurize.fingerprint"])
    rows = [{"key": k, "width": int(w), "height": int(h), "embedding": v}
            for k, w, h, v in zip(keys, widths, heights, matrix)]
    return rows, stored


def check_every_row(out: pathlib.Path, fmt: str, zoo_samples, expected, tolerance: float = 1e-5):
    """The checks of tests/job/test_launch.py: each input in exactly one place, right sizes, right vectors."""
    valid = {s.name: s for s in zoo_samples if s.valid}
    invalid = {s.name: s for s in zoo_samples if not s.valid}
    store = FeatureStore.open(str(out))  # refuses an output without manifest.json
    manifest = store.manifest
    assert manifest["format"] == fmt and manifest["runner"] == "PortableRunner"

    rows, stored = feature_rows(out, fmt)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "duplicate keys"
    assert sorted(keys) == sorted(valid)
    assert sorted(store.keys) == sorted(valid)
    errors = store.errors()
    assert sorted(errors.column("key").to_pylist()) == sorted(invalid)
    assert set(errors.column("stage").to_pylist()) == {"decode"}

    counts = manifest["counts"]
    assert counts["inputs"] == len(zoo_samples) == counts["rows"] + counts["errors"]
    assert counts["rows"] == len(valid) and counts["errors_by_stage"]["decode"] == len(invalid)

    assert [(r["width"], r["height"]) for r in rows] == [(valid[k].width, valid[k].height) for k in keys]
    got = np.stack([r["embedding"] for r in rows])
    want = np.stack([expected[k] for k in keys])
    assert got.shape == (len(valid), 576)
    assert relative_l2(got, want).max() <= tolerance
    assert stored == manifest["fingerprint"] and stored["backbone"] == TEST_MODEL
    check_metrics_match_counts(manifest)  # the portable runner's committed metrics tell the same story


def check_worker_installed_staged_code(records: list[dict], cluster: LocalCluster):
    """Every worker of the job imported `pipeline` from its private install of the staged sdist."""
    assert records, "no worker booted through tools/beam_boot.py"
    checkout = str(REPO) + os.sep
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    for record in records:
        install_dir = record["install_dir"]
        where = record["probe_file"]
        assert not record.get("error") and record["probe"] == "pipeline" and record["probe_error"] is None, record
        assert where and not where.startswith(checkout), f"worker imported the checkout: {record}"
        assert not any(where.startswith(s + os.sep) for s in site), f"worker imported site-packages: {record}"
        assert "workflow.tar.gz" in record["artifacts"] and "workflow.tar.gz" in record["installed"], record
        assert install_dir.startswith(str(cluster.boot_dir) + os.sep), record
        assert record["pythonpath"].split(os.pathsep)[0] == install_dir, record
        assert where == os.path.join(install_dir, "pipeline", "__init__.py"), record
        assert REPO not in pathlib.Path(record["cwd"]).parents and str(REPO) not in record["pythonpath"], record


def featurize_args(source, out, weights, fmt):
    return ["--input", str(source), "--output", str(out), "--model", TEST_MODEL, "--weights", weights,
            "--image-size", str(TEST_SIZE), "--batch-size", "8", "--max-pixels", str(BOMB_MAX_PIXELS),
            "--tf-threads", "2", "--format", fmt]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_cluster_run_installs_staged_code_and_writes_every_row(
        cluster, fmt, zoo_samples, zoo_folder, small_weights, expected, tmp_path):
    import pipeline

    assert pipeline.__file__.startswith(str(REPO)), "the test process is meant to import the checkout"
    before = len(cluster.boot_records())
    started = time.monotonic()
    done = cluster.submit(featurize_args(zoo_folder, tmp_path / "out", small_weights, fmt),
                          timeout=SUBMIT_TIMEOUT_S)
    elapsed = time.monotonic() - started
    diagnostics = cluster.diagnostics(done.stdout, done.stderr)
    assert done.returncode == 0, f"featurize exited {done.returncode} after {elapsed:.0f} s\n{diagnostics}"
    n_valid = sum(s.valid for s in zoo_samples)
    summary = f"{n_valid} feature rows, {len(zoo_samples) - n_valid} error rows from {len(zoo_samples)} inputs"
    assert summary in done.stdout, diagnostics
    records = cluster.boot_records()[before:]
    print(f"featurize --format {fmt} on the cluster: {elapsed:.1f} s; worker boot records:")
    for record in records:
        print(json.dumps(record, sort_keys=True))
    try:
        check_worker_installed_staged_code(records, cluster)
        check_every_row(tmp_path / "out", fmt, zoo_samples, expected)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics}") from None


def test_the_jax_backend_runs_on_the_cluster(cluster, zoo_samples, zoo_folder, small_weights, expected, tmp_path):
    """--keras-backend jax through the job service: the workers build the model on JAX and give the
    vectors TensorFlow gives in this process (relative L2 <= 1e-4)."""
    done = cluster.submit(featurize_args(zoo_folder, tmp_path / "out", small_weights, "parquet")
                          + ["--keras-backend", "jax"], timeout=SUBMIT_TIMEOUT_S)
    diagnostics = cluster.diagnostics(done.stdout, done.stderr)
    assert done.returncode == 0, diagnostics
    try:
        check_every_row(tmp_path / "out", "parquet", zoo_samples, expected, tolerance=1e-4)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics}") from None
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["fingerprint"]["keras_backend"] == "jax"


def test_job_endpoint_not_listening_fails_fast_naming_it_before_the_input_is_listed(small_weights, tmp_path):
    """The probe comes before the listing, which may take minutes: the input here does not exist, and the
    endpoint is what the one sentence names."""
    endpoint = f"localhost:{free_port()}"
    command = [sys.executable, "-m", "pipeline", "run",
               *featurize_args(tmp_path / "not-listed", tmp_path / "out", small_weights, "parquet"),
               "--runner", "PortableRunner", "--job_endpoint", endpoint, "--environment_type", "EXTERNAL",
               "--environment_config", f"localhost:{free_port()}", "--setup_file", "./setup.py"]
    started = time.monotonic()
    try:
        done = run_bounded(command, 30, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"submission to a dead job endpoint still running after 30 s (killed); stderr:\n"
                    f"{(exc.stderr or '')[-3000:]}")
    elapsed = time.monotonic() - started
    assert elapsed < 30
    assert done.returncode == 2, done.stderr
    naming = [line for line in done.stderr.splitlines() if endpoint in line]
    assert len(naming) == 1, done.stderr
    assert naming[0].startswith(f"featurize: error: job_endpoint '{endpoint}' is not answering"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_killed_locally_resumes_on_the_cluster(cluster, numbered, small_weights, tmp_path):
    """The portable path of --resume: workers installed from the sdist read the journal and the
    committed units' kept keys (a duplicate key across a committed and a pending shard)."""
    from pipeline.job.launch import run
    from tests.helpers.crash import read_store, run_and_kill

    shards, _ = numbered
    reference = tmp_path / "reference"
    run(featurize_args(shards, reference, small_weights, "parquet") + ["--direct_running_mode=in_memory"])
    out = tmp_path / "out"
    args = featurize_args(shards, out, small_weights, "parquet")
    run_and_kill([*args, "--direct_running_mode=multi_processing", "--direct_num_workers=2", "--no-progress"],
                 "unit-commit@2", tmp_path)
    committed = len(list((out / "_featurize" / "units").glob("*.json")))
    done = cluster.submit([*args, "--resume"], timeout=SUBMIT_TIMEOUT_S)
    assert done.returncode == 0, cluster.diagnostics(done.stdout, done.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    expected, got = read_store(reference, "parquet"), read_store(out, "parquet")
    assert sorted(got) == sorted(expected)
    assert all(np.array_equal(got[key], vector) for key, vector in expected.items())
    assert manifest["counts"]["reused"] > 0 and manifest["units"]["processed"] == 6 - committed > 0
    assert manifest["counts"]["errors_by_stage"]["read"] == 1  # the duplicated sample key, wherever it fell


class _HeldPhotos(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; any file but the first unit's waits until `release` is set (at most 120 s), so a job
    is still running when the test presses Ctrl-C, however fast the machine."""
    fast: frozenset[str] = frozenset()
    release = threading.Event()

    def do_GET(self):
        if self.path.lstrip("/") not in self.fast:
            self.release.wait(timeout=120)
        super().do_GET()

    def log_message(self, *args):  # not the test's output
        pass


def test_ctrl_c_cancels_the_cluster_job_and_resume_finishes_it(cluster, small_weights, tmp_path):
    """SIGINT to the submitting process once a unit is committed (the other units' photos are held by the test's
    HTTP server): exit 130, one line saying how many units are committed and that the runner was asked to cancel;
    the job service records the job CANCELLED. Beam's Python job service only marks it so (its cancel is a TODO):
    its workers run on to the job's end, which the test lets happen (releasing the photos) and waits for before
    --resume, as a user waits for a job to stop. --resume then leaves every key exactly once."""
    from tests.helpers.samples import _encode, _rgb

    photos = tmp_path / "photos"
    photos.mkdir()
    names = [f"{i:02d}.jpg" for i in range(48)]  # 6 units of 8 (--batch-size)
    for i, name in enumerate(names):
        (photos / name).write_bytes(_encode(_rgb(32, 32, 500 + i), "JPEG"))
    handler = type("Held", (_HeldPhotos,), {"fast": frozenset(names[:8]), "release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(photos)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    listed = tmp_path / "photos.txt"
    listed.write_text("".join(f"http://127.0.0.1:{server.server_port}/{name}\n" for name in names))
    try:
        _ctrl_c_then_resume(cluster, small_weights, tmp_path, listed, handler.release)
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


def _ctrl_c_then_resume(cluster, small_weights, tmp_path, photos, release):
    from tests.helpers.crash import read_store

    out = tmp_path / "out"
    args = [*featurize_args(photos, out, small_weights, "parquet"), "--no-progress"]
    before = set(cluster.job_ids())
    proc = subprocess.Popen(cluster.command(args), cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while not list((out / "_featurize" / "units").glob("*.json")):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.communicate(timeout=60) if proc.poll() is not None else ()
                pytest.fail(f"no unit committed (exit {proc.poll()})\n{cluster.diagnostics(*output)}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the submitter's process group
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130, f"{stderr}\n{cluster.diagnostics(stdout, stderr)}"
    [line] = stderr.strip().splitlines()
    stopped = re.fullmatch(r"featurize: stopped by Ctrl-C with (\d+) of 6 units committed in (.+) \(the runner was "
                           r"asked to cancel the job, whose workers may finish their current work\); to go on, run: "
                           r"(.+)", line)
    assert stopped and int(stopped[1]) >= 1 and stopped[2] == str(out), line
    assert shlex.split(stopped[3])[-1] == "--resume"
    [job] = set(cluster.job_ids()) - before
    assert cluster.job_states(job)[-2:] == ["CANCELLING", "CANCELLED"]
    release.set()
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while cluster.job_state(job) == "CANCELLED":  # until its workers are done: the run's end sets DONE or FAILED
        assert time.monotonic() < deadline, "the cancelled job still runs"
        time.sleep(0.5)
    done = cluster.submit([*args, "--resume"], timeout=SUBMIT_TIMEOUT_S)
    assert done.returncode == 0, cluster.diagnostics(done.stdout, done.stderr)
    found = read_store(out, "parquet")  # every key exactly once
    assert sorted(found) == [f"{i:02d}.jpg" for i in range(48)]
    assert json.loads((out / "manifest.json").read_text())["counts"]["rows"] == 48


def test_teardown_stops_every_cluster_process(cluster):
    """Last in the module: close the cluster explicitly and prove nothing of it is left running."""
    pids = {proc.pid for proc in cluster.servers.values()}
    assert cluster.boot_records(), "the cluster tests did not run a worker"
    leftovers = cluster.stop()
    assert not leftovers, "still running:\n" + "\n".join(leftovers)
    assert all(proc.returncode is not None for proc in cluster.servers.values())  # exited and reaped
    assert not cluster.owned() and not pids & cluster.owned()
