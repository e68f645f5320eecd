"""featurize on a real S3 server (SeaweedFS on 127.0.0.1, an access key, signature checks on;
tests/helpers/s3_server.py): tar shards on S3 to a store on S3 with Beam's --s3_* flags on the default local
runner (worker processes, which Beam starts without pipeline options) equal a local run; the store commands read
the S3 store with the standard AWS variables; a wrong credential or a silent endpoint stops a run in seconds.
"""
import glob
import json
import os
import pathlib
import subprocess
import sys
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.job.entries import UnitEntry
from pipeline.job.launch import run
from tests.helpers.crash import read_store, run_and_kill
from tests.helpers.dask_cluster import DaskCluster
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.portable import REPO, free_port
from tests.helpers.runs import IN_MEMORY, LOCAL, featurize_args
from tests.helpers.s3_server import S3Server
from tests.helpers.servers import featurize_serve, serving

RUN_TIMEOUT_S = 240
REFUSAL_S = 20  # a refused run: parsing and importing Beam, then one probe of at most 5 s


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    yield from serving(S3Server(tmp_path_factory.mktemp("seaweedfs")), "SeaweedFS")


@pytest.fixture(scope="module")
def s3_shards(s3, numbered):
    """The `numbered` tar shards uploaded to a bucket; returns their glob on S3."""
    root = s3.bucket("shards")
    for path in sorted(glob.glob(numbered[0])):
        s3.client().upload_file(path, "shards", f"numbered/{os.path.basename(path)}")
    return f"{root}/numbered/part-*.tar"


def featurize_cli(*args, env=None, timeout=RUN_TIMEOUT_S):
    """`featurize ARGS` in a fresh process with no AWS variables but those of `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(clean, PYTHONPATH=str(REPO), **(env or {})))
    return done


def download(s3, bucket, prefix, folder: pathlib.Path) -> pathlib.Path:
    """Every object under s3://bucket/prefix/ copied to `folder`, as a reader of the store would see it."""
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            target = folder / item["Key"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
    return folder


def assert_equals_reference(local: pathlib.Path, numbered_reference) -> None:
    """A store copied from S3 holds every key of the local tar run exactly once, its vectors, and its counts."""
    _, expected, reference_manifest = numbered_reference("tar")
    found = read_store(local, "parquet")  # every key exactly once
    assert sorted(found) == sorted(expected)
    for key, vector in expected.items():
        np.testing.assert_allclose(found[key], vector, rtol=1e-5, atol=1e-6)
    counts = json.loads((local / "manifest.json").read_text())["counts"]
    assert {k: counts[k] for k in ("inputs", "rows", "errors")} == {
        k: reference_manifest["counts"][k] for k in ("inputs", "rows", "errors")}


@pytest.fixture(scope="module")
def s3_store(s3, s3_shards, small_weights, tmp_path_factory):
    """A run from S3 to S3 with Beam's --s3_* flags only (no AWS variables), on the local runner's worker
    processes (which Beam starts without the options; a run this small would otherwise run in-process)."""
    output = f"{s3.bucket('stores')}/numbered"
    done = featurize_cli("run", *featurize_args(s3_shards, output, small_weights), *s3.flags(), *LOCAL)
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def test_tar_shards_on_s3_make_a_store_on_s3_equal_to_a_local_run(s3, s3_store, numbered_reference, tmp_path):
    assert_equals_reference(download(s3, "stores", "numbered", tmp_path / "copy"), numbered_reference)


def test_a_run_killed_with_a_unit_copied_but_not_journaled_resumes_to_every_key_once(s3, s3_shards, small_weights,
                                                                                     numbered_reference, tmp_path):
    """On S3 a rename is a copy and a delete: the third of six units is killed with its files in place and no
    journal entry; --resume deletes them, reuses the committed units and redoes the rest."""
    output = f"{s3.bucket('killed')}/numbered"
    run_and_kill([*featurize_args(s3_shards, output, small_weights), *s3.flags()], "unit-commit@3", tmp_path)
    committed = s3.client().list_objects_v2(Bucket="killed", Prefix="numbered/_featurize/units/")["KeyCount"]
    assert committed, "nothing was committed before the kill"
    manifest = run([*featurize_args(s3_shards, output, small_weights), *s3.flags(), *IN_MEMORY, "--resume"])
    assert manifest["counts"]["reused"] >= committed
    found = read_store(download(s3, "killed", "numbered", tmp_path / "copy"), "parquet")  # every key once
    expected = numbered_reference("tar")[1]
    assert sorted(found) == sorted(expected)
    for key, vector in expected.items():
        np.testing.assert_allclose(found[key], vector, rtol=1e-5, atol=1e-6)


def test_store_commands_read_the_s3_store_with_the_aws_environment(s3, s3_store, numbered_reference):
    inspected = featurize_cli("inspect", s3_store, env=s3.environment(), timeout=120)
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    counts = numbered_reference("tar")[2]["counts"]
    assert f"rows       {counts['rows']} of {counts['inputs']} inputs" in inspected.stdout
    key = sorted(numbered_reference("tar")[1])[0]
    searched = featurize_cli("search", s3_store, "--query", key, "--k", "3", env=s3.environment(), timeout=120)
    assert searched.returncode == 0, searched.stderr[-3000:]
    assert key in searched.stdout


def test_index_of_an_s3_store_is_refused_with_the_workaround(s3, s3_store):
    done = featurize_cli("index", s3_store, env=s3.environment(), timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is not on a local disk" in done.stderr and "copy the store to a local folder" in done.stderr


@pytest.mark.parametrize("where", ["wrong secret", "silent endpoint"])
def test_a_wrong_credential_or_a_silent_endpoint_stops_the_run_in_one_sentence(s3, s3_shards, small_weights,
                                                                               tmp_path, where):
    if where == "wrong secret":
        flags, endpoint, said = s3.flags(secret_key="not-the-secret"), s3.endpoint, "SignatureDoesNotMatch"
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        flags, said = [*s3.flags()[1:], f"--s3_endpoint_url={endpoint}"], "did not answer"
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        run([*featurize_args(s3_shards, tmp_path / "out", small_weights), *flags])
    assert time.monotonic() - started < REFUSAL_S
    message = str(refused.value)
    assert endpoint in message and said in message and s3_shards in message and "\n" not in message


def test_a_store_command_with_a_wrong_credential_says_so(s3, s3_store):
    done = featurize_cli("inspect", s3_store, env=s3.environment(secret_key="not-the-secret"), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert s3.endpoint in done.stderr and "SignatureDoesNotMatch" in done.stderr


def test_duplicates_of_an_s3_store_are_written_beside_it_and_inspect_reads_them(s3, s3_store, tmp_path):
    from pipeline.store.feature_store import FeatureStore

    local = FeatureStore.open(str(download(s3, "stores", "numbered", tmp_path / "copy")))
    vectors = np.concatenate([block for _, block in local.iter_embeddings()])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    threshold = float(np.quantile(similarity[np.triu_indices(len(unit), 1)], 0.99))  # some pairs, not all
    want = local.duplicates(threshold).table
    assert want.num_rows >= 2
    done = featurize_cli("duplicates", s3_store, "--threshold", repr(threshold), env=s3.environment(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    s3.client().download_file("stores", "numbered/duplicates.parquet", str(tmp_path / "duplicates.parquet"))
    got = pq.read_table(tmp_path / "duplicates.parquet")
    assert got.select(["key", "group"]).to_pylist() == want.select(["key", "group"]).to_pylist()
    inspected = featurize_cli("inspect", s3_store, env=s3.environment(), timeout=120)
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    groups = len(set(want.column("group").to_pylist()))
    assert f"duplicates {groups:,} groups of {want.num_rows:,} keys" in inspected.stdout


def test_a_dask_run_reads_shards_on_s3_and_writes_its_store_there(s3, s3_shards, small_weights, numbered_reference,
                                                                   tmp_path):
    """The cluster's workers have the AWS variables of their own (a cluster's credentials); the launcher, the
    flags."""
    (tmp_path / "dask").mkdir()
    cluster = DaskCluster(tmp_path / "dask", workers=1, env=s3.environment()).start()
    try:
        output = f"{s3.bucket('dask')}/numbered"
        run([*featurize_args(s3_shards, output, small_weights, "parquet", "--runner", "DaskRunner",
                             "--dask_client_address", cluster.address, "--tf-threads", "1"), *s3.flags()])
    finally:
        leftovers = cluster.stop()
    assert not leftovers, leftovers
    found = read_store(download(s3, "dask", "numbered", tmp_path / "copy"), "parquet")  # every key once
    expected = numbered_reference("tar")[1]
    assert sorted(found) == sorted(expected)
    for key, vector in expected.items():
        np.testing.assert_allclose(found[key], vector, rtol=1e-5, atol=1e-6)


def test_a_run_through_resets_and_stalls_keeps_every_key_once(s3, s3_shards, small_weights, numbered_reference,
                                                              tmp_path):
    """Every S3 request of the run (the probe, the listing, the workers' reads and writes) goes through a proxy that
    resets a quarter of its connections, at a random byte of the server's answer, and stalls a tenth; its first
    connection, the probe's first try, is reset before any byte (the probe tries again). botocore retries a request
    whose connection is cut before its answer; a body cut short Beam's S3 reader reads again at once, then after a
    backoff of about 5 s: the first two GETs of one shard are cut in their body to show that layer. featurize's own
    retry (pipeline/inputs/retries.py) comes after Beam's 7 backoffs, minutes later, and is not reached here. The store
    equals a clean run's, each unit's files are the ones its journal entry names, nothing else."""
    proxy = FaultProxy(s3.port, reset=0.25, stall=0.1, seed=25, reset_first=1, cut_gets={"part-0002.tar": 2}).start()
    try:
        output = f"{s3.bucket('faults')}/numbered"
        flags = [*s3.flags()[1:], f"--s3_endpoint_url={proxy.endpoint}"]
        done = featurize_cli("run", *featurize_args(s3_shards, output, small_weights), *flags,
                             env={"TMPDIR": str(tmp_path)})
    finally:
        assert not proxy.stop(), "proxy threads still running"
    print(f"proxy: {dict(proxy.counts)}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert proxy.counts["resets_sent"] >= 3 and proxy.counts["stall"] >= 1 and proxy.counts["cut"] == 2, proxy.counts
    local = download(s3, "faults", "numbered", tmp_path / "copy")
    assert_equals_reference(local, numbered_reference)
    entries = [UnitEntry.from_json(json.loads(path.read_text()))
               for path in (local / "_featurize" / "units").glob("*.json")]
    stored = {f"{folder}/{path.name}" for folder in ("features", "errors") for path in (local / folder).glob("*")}
    named = {path for entry in entries for path in entry.files.values()}
    assert stored == {path for path in named if path.split("/")[0] in ("features", "errors")}
    logs = "".join(path.read_text() for path in (tmp_path / "featurize-logs").glob("*.log"))
    assert "before retrying get_range" in logs, "Beam's S3 reader did not retry the cut reads"  # its backoff, logged


@pytest.mark.parametrize("command", ["run", "inspect", "search"])
def test_a_store_that_cannot_be_reached_stops_a_command_in_one_sentence_naming_it(s3_store, small_weights, tmp_path,
                                                                                  command):
    endpoint = f"http://127.0.0.1:{free_port()}"  # a closed port
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    args = {"run": featurize_args("s3://shards/numbered/part-*.tar", tmp_path / "out", small_weights),
            "inspect": [s3_store], "search": [s3_store, "--query", "s0/img000"]}[command]
    started = time.monotonic()
    done = featurize_cli(command, *args, env=env, timeout=120)
    print(f"featurize {command} against a closed port: exit {done.returncode} after {time.monotonic() - started:.1f} s")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("featurize: error: ") and endpoint in line and "did not answer" in line, line


def test_serve_answers_from_an_s3_store(s3, s3_store, tmp_path):
    """`featurize serve s3://...` with the AWS variables: exact neighbours as a local copy gives them, and thumbnails
    read from the tar members on S3."""
    from pipeline.store.feature_store import FeatureStore

    local = FeatureStore.open(str(download(s3, "stores", "numbered", tmp_path / "copy")))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    key = local.keys[3]
    with featurize_serve(s3_store, env=dict(clean, PYTHONPATH=str(REPO), **s3.environment())) as base:
        results = httpx.get(f"{base}/api/search", params={"key": key, "k": 4}, timeout=60).json()["results"]
        thumbnail = httpx.get(f"{base}/api/thumbnail", params={"key": key}, timeout=60)
    expected = local.search(local.get(key), k=4, exact=True)
    assert [r["key"] for r in results] == expected.keys[0] and results[0]["uri"].startswith("s3://shards/")
    np.testing.assert_allclose([r["score"] for r in results], expected.scores[0], rtol=1e-5, atol=1e-6)
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg", thumbnail.text[:300]
