"""Servers a test module starts (a Beam cluster, a dask cluster): one fixture body for all of them; and
`featurize serve` for the block of a test."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Iterator, Protocol, TypeVar

import httpx

from tests.helpers.portable import free_port


class Server(Protocol):
    def start(self) -> "Server": ...
    def stop(self) -> list[str]: ...  # what survived being stopped, in words


S = TypeVar("S", bound=Server)


def serving(server: S, name: str) -> Iterator[S]:
    """Start `server` for a fixture, stop it by PID at teardown, and fail if any of its processes survived."""
    yield server.start()
    leftovers = server.stop()
    assert not leftovers, f"processes of {name} still running after teardown:\n" + "\n".join(leftovers)


@contextlib.contextmanager
def featurize_serve(root: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`featurize serve root` on a free port (with `env` as its environment, else this one's) until the block
    ends; yields its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", root, "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(base + "/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {process.stdout.read() if process.poll() is not None else 'timeout'}")
            time.sleep(0.3)
        yield base
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
