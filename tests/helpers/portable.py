"""A Beam "cluster" on localhost for tests: job service + worker pool + tools/beam_boot.py.

Not a test module.  ``LocalCluster`` starts Beam's Python job service
(``local_job_service_main``) and an EXTERNAL worker pool (``worker_pool_main``) as separate
process groups, each in its own temporary working directory with no PYTHONPATH, so a
worker can only run the project's code if the boot step installed what the job staged.
``submit`` runs ``python -m pipeline run ... --runner PortableRunner`` from the checkout;
``stop`` ends every process the cluster started and reports any that survived.

Only ``localhost`` is ever dialled; ports are found by binding port 0 on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[2]
BOOT = REPO / "tools" / "beam_boot.py"
TOKEN_VAR = "FEATURIZE_CLUSTER_TOKEN"


def free_port() -> int:
    """A TCP port nobody listens on right now (bind port 0 on 127.0.0.1, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # gone, or not ours to read
        return b""


def processes() -> dict[int, Proc]:
    """Every process on the machine, from /proc (no psutil here)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat").decode(errors="replace")
        if not stat:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        cmdline = _read(f"/proc/{entry}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        table[int(entry)] = Proc(int(entry), int(fields[1]), int(fields[2]), fields[0], cmdline)
    return table


def environ_has(pid: int, needle: str) -> bool:
    return needle.encode() in _read(f"/proc/{pid}/environ")


def descendants(root: int, table: dict[int, Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(proc: Proc | None) -> bool:
    return proc is not None and proc.state not in ("Z", "X")  # zombies are dead, merely unreaped


class Aborted(Exception):
    def __init__(self, reason: str, stdout: str, stderr: str):
        super().__init__(reason)
        self.reason, self.stdout, self.stderr = reason, stdout, stderr


def run_bounded(command: list[str], timeout: float, abort=None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout that kills the command's whole process group.

    Raises subprocess.TimeoutExpired (with the output so far) when the timeout passes, and
    Aborted when `abort()`, asked every second, returns a reason to give up early.
    """
    deadline = time.monotonic() + timeout
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True, start_new_session=True, **kwargs) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                return subprocess.CompletedProcess(command, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                reason = abort() if abort else None
                if reason is None and time.monotonic() < deadline:
                    continue
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            if reason is not None:
                raise Aborted(reason, out, err)
            raise subprocess.TimeoutExpired(command, timeout, out, err)


def tail(text: str, limit: int = 6000) -> str:
    return text if len(text) <= limit else "...[cut]...\n" + text[-limit:]


# ---------------------------------------------------------------------------- the cluster
class LocalCluster:
    """Job service + worker pool on localhost, booting workers with tools/beam_boot.py."""

    START_TIMEOUT_S = 90  # each server must answer on its port within this (slow, shared 2-core CI)

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root).resolve()
        self.token = uuid.uuid4().hex
        self.job_port = self.pool_port = 0
        self.boot_dir = self.root / "boot"  # parent of every worker's semi-persistent directory
        self.boot_log = self.root / "boot.jsonl"
        self.logs: dict[str, pathlib.Path] = {}
        self.servers: dict[str, subprocess.Popen] = {}
        self.seen: set[int] = set()  # every pid the cluster was seen to own
        self.stopped = False

    # -- addresses
    @property
    def job_endpoint(self) -> str:
        return f"localhost:{self.job_port}"

    @property
    def pool_endpoint(self) -> str:
        return f"localhost:{self.pool_port}"

    def markers(self) -> list[str]:
        """Strings in the command line of a process of this cluster (and of no other)."""
        return [f" --port {self.job_port} ", f" --service_port {self.pool_port} ", str(self.root)]

    # -- start
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update({
            TOKEN_VAR: self.token,
            "FEATURIZE_BOOT_LOG": str(self.boot_log),
            "FEATURIZE_BOOT_DIR": str(self.boot_dir),
            "FEATURIZE_BOOT_LOCALHOST": "1",
            "FEATURIZE_BOOT_TIMEOUT": "120",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        cwd = self.root / f"{name}-cwd"  # outside the checkout: '' on sys.path must not find pipeline/
        cwd.mkdir(parents=True, exist_ok=True)
        env = self._env()
        env["PWD"] = str(cwd)
        self.logs[name] = self.root / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # own process group
        self.servers[name] = proc
        self.seen.add(proc.pid)
        return proc

    def _wait_listening(self, name: str, port: int) -> None:
        import grpc

        proc, deadline = self.servers[name], time.monotonic() + self.START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} before listening on "
                                   f"localhost:{port}\n{self.diagnostics()}")
            with grpc.insecure_channel(f"localhost:{port}") as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} is not listening on localhost:{port} after "
                                   f"{self.START_TIMEOUT_S} s\n{self.diagnostics()}")

    def start(self) -> "LocalCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self.boot_dir.mkdir(exist_ok=True)
        # The pool runs the container executable directly: pin it to this interpreter.
        wrapper = self.root / "beam-boot"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{BOOT}" "$@"\n')
        wrapper.chmod(0o755)
        self.job_port, self.pool_port = free_port(), free_port()
        while self.pool_port == self.job_port:
            self.pool_port = free_port()
        try:
            self._spawn("job-service", [
                sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                "--port", str(self.job_port), "--staging_dir", str(self.root / "job-staging")])
            self._spawn("worker-pool", [
                sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                "--service_port", str(self.pool_port), "--container_executable", str(wrapper)])
            self._wait_listening("job-service", self.job_port)
            self._wait_listening("worker-pool", self.pool_port)
        except BaseException:
            self.stop()
            raise
        return self

    # -- use
    def boot_records(self) -> list[dict]:
        if not self.boot_log.exists():
            return []
        complete = self.boot_log.read_text().split("\n")[:-1]  # a line still being written has no newline yet
        return [json.loads(line) for line in complete if line.strip()]

    def command(self, featurize_args: list[str]) -> list[str]:
        """`python -m pipeline run ARGS` against this cluster; run it from the checkout (so ./setup.py resolves)."""
        return [sys.executable, "-m", "pipeline", "run", *featurize_args,
                "--runner", "PortableRunner", "--job_endpoint", self.job_endpoint,
                "--environment_type", "EXTERNAL", "--environment_config", self.pool_endpoint,
                "--setup_file", "./setup.py", "--job_server_timeout", "60"]

    def job_ids(self) -> list[str]:
        """The job service's jobs, in no particular order."""
        from apache_beam.portability.api import beam_job_api_pb2 as api

        return [info.job_id for info in self._jobs().GetJobs(api.GetJobsRequest(), timeout=10).job_info]

    def job_states(self, job_id: str) -> list[str]:
        """The states a job went through, by name, up to its first terminal one (CANCELLED, DONE, FAILED...)."""
        from apache_beam.portability.api import beam_job_api_pb2 as api

        stream = self._jobs().GetStateStream(api.GetJobStateRequest(job_id=job_id), timeout=10)
        return [api.JobState.Enum.Name(event.state) for event in stream]

    def job_state(self, job_id: str) -> str:
        from apache_beam.portability.api import beam_job_api_pb2 as api

        return api.JobState.Enum.Name(self._jobs().GetState(api.GetJobStateRequest(job_id=job_id), timeout=10).state)

    def _jobs(self):
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2_grpc

        return beam_job_api_pb2_grpc.JobServiceStub(grpc.insecure_channel(self.job_endpoint))

    def submit(self, featurize_args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        """`python -m pipeline run ARGS` against this cluster, from the checkout (so ./setup.py resolves)."""
        command = self.command(featurize_args)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        before = len(self.boot_records())

        def boot_failed():  # a worker that fails to boot would leave the job waiting ~5 minutes
            failed = [r for r in self.boot_records()[before:] if r.get("error")]
            return f"a worker failed to boot: {failed[0]['error']}" if failed else None

        try:
            return run_bounded(command, timeout, abort=boot_failed, cwd=REPO, env=env)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"featurize did not finish in {timeout} s\n"
                                 f"{self.diagnostics(exc.stdout, exc.stderr)}") from None
        except Aborted as exc:
            raise AssertionError(f"{exc.reason}; featurize killed\n"
                                 f"{self.diagnostics(exc.stdout, exc.stderr)}") from None

    def diagnostics(self, stdout: str | bytes | None = None, stderr: str | bytes | None = None) -> str:
        """Everything useful when a cluster run fails: the submitter's output, the boot log, server logs."""
        parts = []
        for label, text in (("featurize stdout", stdout), ("featurize stderr", stderr)):
            if text:
                parts.append(f"----- {label}\n{tail(text.decode() if isinstance(text, bytes) else text)}")
        parts.append(f"----- boot log {self.boot_log}\n"
                     + (self.boot_log.read_text() if self.boot_log.exists() else "(none)"))
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"----- {name} log {path}\n{tail(text, 8000)}")
        return "\n".join(parts)

    # -- stop
    def owned(self, table: dict[int, Proc] | None = None) -> set[int]:
        """Live pids that belong to this cluster: server trees, their process groups, token or markers."""
        table = processes() if table is None else table
        mine = set()
        for proc in self.servers.values():
            mine |= {proc.pid} | descendants(proc.pid, table)
            mine |= {p.pid for p in table.values() if p.pgid == proc.pid}
        markers = self.markers()
        for p in table.values():
            if p.pid == os.getpid():
                continue
            if any(m in f" {p.cmdline} " for m in markers) or environ_has(p.pid, self.token):
                mine.add(p.pid)
        return {pid for pid in mine if alive(table.get(pid))}

    def leftovers(self) -> list[str]:
        """Descriptions of processes of this cluster still running (empty when all is clean)."""
        table = processes()
        pids = self.owned(table) | {pid for pid in self.seen if alive(table.get(pid))}
        return [f"pid {pid} ppid {table[pid].ppid} state {table[pid].state}: {table[pid].cmdline[:300]}"
                for pid in sorted(pids) if pid in table]

    def _signal_all(self, sig: int) -> set[int]:
        pids = self.owned()
        self.seen |= pids
        for proc in self.servers.values():
            try:
                os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return pids

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.servers.values():
                proc.poll()  # reap our direct children
            if not self.owned():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def stop(self) -> list[str]:
        """SIGTERM everything the cluster owns, SIGKILL what is left after 15 s; returns leftovers."""
        if not self.stopped:
            self.stopped = True
            self._signal_all(signal.SIGTERM)
            if not self._wait_gone(15):
                self._signal_all(signal.SIGKILL)
                self._wait_gone(10)
            for proc in self.servers.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        return self.leftovers()
