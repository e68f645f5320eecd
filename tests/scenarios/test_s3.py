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

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.job.launch import run
from tests.helpers.crash import read_store, run_and_kill
from tests.helpers.dask_cluster import DaskCluster
from tests.helpers.portable import REPO, free_port
from tests.helpers.runs import IN_MEMORY, featurize_args
from tests.helpers.s3_server import S3Server
from tests.helpers.servers import serving

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


@pytest.fixture(scope="module")
def s3_store(s3, s3_shards, small_weights, tmp_path_factory):
    """A run from S3 to S3 with Beam's --s3_* flags only (no AWS variables), on the default local runner."""
    output = f"{s3.bucket('stores')}/numbered"
    done = featurize_cli("run", *featurize_args(s3_shards, output, small_weights), *s3.flags())
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def test_tar_shards_on_s3_make_a_store_on_s3_equal_to_a_local_run(s3, s3_store, numbered_reference, tmp_path):
    _, expected, reference_manifest = numbered_reference("tar")
    local = download(s3, "stores", "numbered", tmp_path / "copy")
    found = read_store(local, "parquet")  # every key exactly once
    assert sorted(found) == sorted(expected)
    for key, vector in expected.items():
        np.testing.assert_allclose(found[key], vector, rtol=1e-5, atol=1e-6)
    counts = json.loads((local / "manifest.json").read_text())["counts"]
    assert {k: counts[k] for k in ("inputs", "rows", "errors")} == {
        k: reference_manifest["counts"][k] for k in ("inputs", "rows", "errors")}


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
