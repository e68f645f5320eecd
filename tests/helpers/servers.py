"""Servers a test module starts (a Beam cluster, a dask cluster): one fixture body for all of them."""
from __future__ import annotations

from typing import Iterator, Protocol, TypeVar


class Server(Protocol):
    def start(self) -> "Server": ...
    def stop(self) -> list[str]: ...  # what survived being stopped, in words


S = TypeVar("S", bound=Server)


def serving(server: S, name: str) -> Iterator[S]:
    """Start `server` for a fixture, stop it by PID at teardown, and fail if any of its processes survived."""
    yield server.start()
    leftovers = server.stop()
    assert not leftovers, f"processes of {name} still running after teardown:\n" + "\n".join(leftovers)
