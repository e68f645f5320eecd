"""A dask.distributed cluster on 127.0.0.1 for tests: `dask scheduler` + `dask worker --nworkers N --nthreads 1`.

Not a test module. Each server runs in its own process group (its workers are the nanny's
children), so `stop` ends the whole group by the PID it started: SIGTERM, a bounded wait,
then SIGKILL. Every wait is bounded; only 127.0.0.1 is ever bound or dialled.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from tests.helpers.crash import group_alive
from tests.helpers.portable import REPO, free_port

START_TIMEOUT_S = 90  # two workers importing Beam and dask on a loaded 2-core machine
STOP_TIMEOUT_S = 20


class DaskCluster:
    def __init__(self, workdir: pathlib.Path, workers: int = 2, env: dict[str, str] | None = None):
        """`env`: variables the cluster's processes get besides this one's (a cluster's own credentials)."""
        self.workdir, self.workers, self.env = pathlib.Path(workdir), workers, env or {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.servers: dict[str, subprocess.Popen] = {}
        self.client = None

    def _start(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "w")
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **self.env)
        self.servers[name] = subprocess.Popen(
            [str(pathlib.Path(sys.executable).parent / "dask"), *args], cwd=self.workdir, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def start(self) -> "DaskCluster":
        from dask.distributed import Client

        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                    "--dashboard-address", "127.0.0.1:0")
        self._start("workers", "worker", f"tcp://{self.address}", "--nworkers", str(self.workers), "--nthreads", "1",
                    "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                    "--local-directory", str(self.workdir / "workers"))
        try:
            self.client = Client(f"tcp://{self.address}", timeout=START_TIMEOUT_S)
            self.client.wait_for_workers(self.workers, timeout=START_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"the dask cluster did not start: {exc}\n{logs}") from None
        return self

    def worker_pids(self) -> dict[str, int]:
        """{worker address: pid of its process} (the processes that run the tasks)."""
        return self.client.run(os.getpid)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in sorted(self.workdir.glob("*.log")))

    def stop(self) -> list[str]:
        """End every process the cluster started; returns a line for each group still alive after."""
        if self.client is not None:
            self.client.close(timeout=10)
            self.client = None
        for proc in self.servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.servers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        leftovers = []
        for name, proc in self.servers.items():
            if group_alive(proc.pid):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # a worker stuck in a task ignores SIGTERM's grace
                except ProcessLookupError:  # the group ended meanwhile
                    pass
                proc.wait(timeout=STOP_TIMEOUT_S)
            until = time.monotonic() + STOP_TIMEOUT_S
            while group_alive(proc.pid) and time.monotonic() < until:
                time.sleep(0.1)
            if group_alive(proc.pid):
                leftovers.append(f"{name}: {group_alive(proc.pid)}")
        return leftovers
