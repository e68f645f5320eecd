"""featurize on a real dask.distributed cluster (Beam's DaskRunner): a scheduler and two single-thread
worker processes on 127.0.0.1 (tests/helpers/dask_cluster.py).

Folder and tar-shard runs equal the local runner's keys and vectors, both workers get units, a worker
SIGKILLed in the middle of a unit leaves every key exactly once, --max-error-rate is judged over
every partition, and the manifest says the runner reports no metrics.
"""
import concurrent.futures
import json
import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

from pipeline.errors import ConfigError  # noqa: E402
from pipeline.job.runner import DASK_RUNNER, parse_run_args  # noqa: E402
from pipeline.job.launch import run  # noqa: E402
from pipeline.job.runner import metrics_summary, pipeline_options  # noqa: E402
from tests.helpers import slow_fs  # noqa: E402
from tests.helpers.crash import read_store  # noqa: E402
from tests.helpers.dask_cluster import DaskCluster  # noqa: E402
from tests.helpers.hub_presets import write_photos  # noqa: E402
from tests.helpers.runs import featurize_args  # noqa: E402
from tests.helpers.servers import serving  # noqa: E402

RUN_TIMEOUT_S = 240  # a run on the cluster; a hung one fails the test instead of the suite


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    yield from serving(DaskCluster(tmp_path_factory.mktemp("dask")), "the dask cluster")


def dask_args(cluster, source, out, weights, *extra):
    return featurize_args(source, out, weights, "parquet", "--runner", "DaskRunner",
                          "--dask_client_address", cluster.address, "--tf-threads", "1", *extra)


def run_bounded(args, cluster):
    """run(args) in a thread, waited for at most RUN_TIMEOUT_S (the cluster's logs on failure)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(run, args).result(timeout=RUN_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"the dask run did not finish in {RUN_TIMEOUT_S} s\n{cluster.logs()}")
    finally:
        pool.shutdown(wait=False)  # a hung run must not hang the suite: the cluster's teardown ends it


def waiting_storage(cluster, path, latency_s: float) -> str:
    """`path` as slow:// (tests/helpers/slow_fs.py), whose every call waits `latency_s` on the cluster's
    workers, as units wait on an object store. Units of tiny local images finish in a few ms, before the
    scheduler balances anything, and run where the previous stage's data sits (often all on one worker);
    units that take a while are what a real run has, and what work stealing spreads."""
    def configure(latency_s=latency_s):
        from tests.helpers import slow_fs as on_worker  # registers slow:// in the worker's process

        on_worker.configure(latency_s)

    cluster.client.run(configure)
    return slow_fs.slow_path(str(path))


def journal_entries(out):
    return [json.loads(path.read_text()) for path in sorted((out / "_featurize" / "units").glob("*.json"))]


def check_equal_to_local(out, reference):
    expected, got = read_store(reference, "parquet"), read_store(out, "parquet")  # read_store refuses duplicates
    assert sorted(got) == sorted(expected)
    different = [key for key, vector in expected.items() if not np.array_equal(got[key], vector)]
    assert not different, f"{len(different)} vectors differ from the local runner's, e.g. {different[:3]}"


def test_dask_flags_are_known_and_units_get_a_partition_each():
    _, beam_args = parse_run_args(["--input", "in/", "--output", "out/", "--runner", "DaskRunner",
                                   "--dask_client_address", "127.0.0.1:1"])
    options = pipeline_options(beam_args).get_all_options(drop_default=True)
    assert options["runner"] == DASK_RUNNER and options["address"] == "127.0.0.1:1"
    assert options["partition_size"] == 1  # Dask's 128 per partition would put a small job on one worker
    mine = pipeline_options(["--runner=DaskRunner", "--dask_npartitions=3"]).get_all_options(drop_default=True)
    assert mine["npartitions"] == 3 and "partition_size" not in mine
    # A --dask_ flag alone is known too (without it Beam would drop a misspelt one with a warning).
    parse_run_args(["--input", "in/", "--output", "out/", "--dask_partition_size", "4"])
    with pytest.raises(ConfigError, match="--dask_client_adress"):
        parse_run_args(["--input", "in/", "--output", "out/", "--runner", "DaskRunner",
                        "--dask_client_adress", "127.0.0.1:1"])


def test_a_runner_without_metrics_is_said_to_have_none():
    from apache_beam.runners.dask.dask_runner import DaskRunnerResult

    result = DaskRunnerResult(client=None, futures=[])
    assert metrics_summary(result, DASK_RUNNER) == {"unavailable": "DaskRunner reports no metrics"}


def test_the_graph_has_no_multi_output_pardo(numbered, small_weights, tmp_path):
    """The DaskRunner hands a multi-output ParDo's consumers every output mixed: the run's graph has none."""
    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor

    from pipeline.job.launch import build, prepare, upload_plan

    shards, _ = numbered
    job = prepare(featurize_args(shards, tmp_path / "out", small_weights, "parquet", "--runner", "DaskRunner"))
    upload_plan(job)
    p = beam.Pipeline(options=job.options)
    build(p, job)
    pardos = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                pardos.append((node.full_label, len(node.outputs)))

    p.visit(Visitor())
    assert any("ScanKeys" in label for label, _ in pardos)
    assert [(label, n) for label, n in pardos if n != 1] == []


def test_a_folder_run_equals_the_local_runner_and_spreads_over_every_worker(
        dask_cluster, numbered, numbered_reference, small_weights, tmp_path):
    _, folder = numbered
    reference, _, local_manifest = numbered_reference("files")
    out = tmp_path / "out"
    started = time.monotonic()
    source = waiting_storage(dask_cluster, folder, latency_s=0.2)  # 4 files a unit: ~1 s each
    manifest = run_bounded(dask_args(dask_cluster, source, out, small_weights), dask_cluster)
    print(f"folder of 60 files, {manifest['units']['processed']} units, on 2 dask workers: "
          f"{time.monotonic() - started:.1f} s")
    check_equal_to_local(out, reference)
    assert manifest["runner"] == DASK_RUNNER
    assert manifest["metrics"] == {"unavailable": "DaskRunner reports no metrics"}  # not zeros
    assert manifest["counts"] == local_manifest["counts"]
    workers = {entry["worker"] for entry in journal_entries(out)}
    pids = {f"{os.uname().nodename}:{pid}" for pid in dask_cluster.worker_pids().values()}
    assert workers == pids, f"units ran on {workers}, the cluster's workers are {pids}"


def test_a_tar_shard_run_equals_the_local_runner(dask_cluster, numbered, numbered_reference, small_weights, tmp_path):
    """Shards go through the duplicate-key scan (a key repeated across two shards) on the cluster."""
    shards, _ = numbered
    reference, _, local_manifest = numbered_reference("tar")
    out = tmp_path / "out"
    source = waiting_storage(dask_cluster, shards, latency_s=0.5)  # a shard is opened to scan and to read
    manifest = run_bounded(dask_args(dask_cluster, source, out, small_weights), dask_cluster)
    check_equal_to_local(out, reference)
    assert manifest["counts"] == local_manifest["counts"]
    assert manifest["counts"]["errors_by_stage"]["read"] == 1  # the duplicated key, as on the local runner
    workers = {entry["worker"] for entry in journal_entries(out)}
    assert len(workers) == 2, f"units ran on {workers} only"


def test_a_worker_killed_mid_unit_leaves_every_key_once(
        dask_cluster, numbered, numbered_reference, small_weights, tmp_path):
    """One worker holds in the middle of a unit (after its first batch) and is SIGKILLed: the nanny starts a
    new one, the scheduler runs the lost tasks again, and the store has every key exactly once."""
    shards, _ = numbered
    reference, _, _ = numbered_reference("tar")
    markers = tmp_path / "failpoints"
    markers.mkdir()
    victim = sorted(dask_cluster.worker_pids())[0]

    def hold_mid_unit(directory=str(markers)):
        os.environ.update(FEATURIZE_FAILPOINTS="unit-read@1", FEATURIZE_FAILPOINT_DIR=directory)

    dask_cluster.client.run(hold_mid_unit, workers=[victim])
    out = tmp_path / "out"
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        future = pool.submit(run, dask_args(dask_cluster, shards, out, small_weights))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (markers / "unit-read").exists():
            if future.done() or time.monotonic() > deadline:
                dask_cluster.client.run(os.environ.pop, "FEATURIZE_FAILPOINTS", None, workers=[victim])
                pytest.fail(f"the worker never held mid-unit (run done: {future.done()})\n{dask_cluster.logs()}")
            time.sleep(0.05)
        time.sleep(0.2)  # the marker is written before its pid is flushed
        held = int((markers / "unit-read").read_text())
        assert held == dask_cluster.worker_pids().get(victim)
        os.kill(held, signal.SIGKILL)
        try:
            manifest = future.result(timeout=RUN_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            pytest.fail(f"the run did not finish after the kill\n{dask_cluster.logs()}")
    finally:
        pool.shutdown(wait=False)
    check_equal_to_local(out, reference)
    assert manifest["units"]["processed"] == 6
    entries = journal_entries(out)
    assert len(entries) == 6 and all(f":{held}" not in entry["worker"] for entry in entries)
    left = sorted(p.name for p in (out / "features").iterdir())
    assert len(left) == 6, f"files of the killed attempt are still there: {left}"


def test_the_error_rate_is_judged_over_every_partition(
        dask_cluster, numbered, numbered_reference, small_weights, tmp_path):
    """1 of the 60 inputs is corrupt (1.7%), one unit of ~4 inputs per partition: no partition alone
    sees enough inputs to judge, the whole run does (from the journal), and it stops without a manifest."""
    from pipeline.logs import RunFailed

    _, folder = numbered
    units = numbered_reference("files")[2]["units"]["processed"]
    out = tmp_path / "out"
    with pytest.raises(RunFailed, match=r"1\.7% of 60 inputs are error rows, more than --max-error-rate 0\.01"):
        run_bounded(dask_args(dask_cluster, folder, out, small_weights, "--max-error-rate", "0.01"), dask_cluster)
    assert not (out / "manifest.json").exists()
    assert len(journal_entries(out)) == units > 2


def test_a_hub_preset_on_the_cluster_equals_the_local_runner(dask_cluster, hub_presets, tmp_path):
    """The workers stage the preset from the store's copy (no hub), and give the local runner's vectors."""
    source = write_photos(str(tmp_path / "photos"), (56, 56), count=8)
    flags = ["--input", source, "--model", f"hub:{hub_presets['dinov2']}", "--batch-size", "4", "--no-progress"]
    run([*flags, "--output", str(tmp_path / "local"), "--direct_running_mode=in_memory"])
    manifest = run_bounded([*flags, "--output", str(tmp_path / "dask"), "--runner", "DaskRunner",
                            "--dask_client_address", dask_cluster.address, "--tf-threads", "1"], dask_cluster)
    assert manifest["counts"]["rows"] == 8
    check_equal_to_local(tmp_path / "dask", tmp_path / "local")
