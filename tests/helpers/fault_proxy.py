"""A TCP proxy on 127.0.0.1 that breaks a chosen fraction of the connections it forwards (to an S3 server).

Not a test module. Each accepted connection draws its fate from a seeded generator, in accept order (the first
`reset_first` are `reset` with no byte forwarded: a command's first request); `reset` connections forward a random
number of the server's bytes (0 to `reset_within` bytes) and then close with SO_LINGER 0, so the client gets a TCP
reset, mid-response or before any; `stall` connections forward
nothing for `stall_s` and then go on normally (a slow network, not a dead one); the rest are passed through.
`cut_gets` ({text: n}) also cuts the answer to the first n GET requests whose request line holds `text`: the headers
and `cut_after` bytes pass, then a reset (too late for the client library to retry: it is reading the body). It
counts what it did. Threads only, every wait bounded; `stop` closes every socket and joins every thread.
"""
from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections import Counter

POLL_S = 0.2  # how often a blocked thread looks at the stop flag
JOIN_TIMEOUT_S = 10.0


class FaultProxy:
    def __init__(self, upstream_port: int, reset: float = 0.0, stall: float = 0.0, seed: int = 0,
                 reset_within: int = 4096, stall_s: float = 1.0, reset_first: int = 0,
                 cut_gets: dict[str, int] | None = None, cut_after: int = 2048):
        self.upstream = ("127.0.0.1", upstream_port)
        self.reset_first = reset_first
        self.cut_gets, self.cut_after = dict(cut_gets or {}), cut_after
        self.reset, self.stall, self.reset_within, self.stall_s = reset, stall, reset_within, stall_s
        self._random = random.Random(seed)
        # `accepted` connections, each `reset`, `stall` or `pass`; `resets_sent`: resets that happened
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self._listener.listen(64)
        self._listener.settimeout(POLL_S)
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _fate(self) -> tuple[str, int]:
        with self._lock:  # the accept thread alone draws, so the sequence of fates is the seed's
            self.counts["accepted"] += 1
            draw, budget = self._random.random(), self._random.randrange(self.reset_within + 1)
            forced = self.counts["accepted"] <= self.reset_first
            fate = "reset" if forced or draw < self.reset else "stall" if draw < self.reset + self.stall else "pass"
            self.counts[fate] += 1
            return fate, 0 if forced else budget

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:  # the listener was closed by stop()
                return
            fate, budget = self._fate()
            self._spawn(self._forward, client, fate, budget)

    def _forward(self, client: socket.socket, fate: str, budget: int) -> None:
        """Copy bytes both ways until either side closes; a `reset` connection is cut once the server has sent
        `budget` bytes through it."""
        try:
            upstream = socket.create_connection(self.upstream, timeout=JOIN_TIMEOUT_S)
        except OSError:
            client.close()
            return
        if fate == "stall":
            self._stopping.wait(self.stall_s)
        sent_down = 0
        try:
            while not self._stopping.is_set():
                if fate == "reset" and sent_down >= budget:
                    self._reset(client)
                    return
                readable, _, _ = select.select([client, upstream], [], [], POLL_S)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is upstream:
                        if fate == "reset" and sent_down + len(data) > budget:
                            data = data[:budget - sent_down]  # the bytes before the cut, then the reset
                        sent_down += len(data)
                        client.sendall(data)
                    else:
                        if self._cut(data):  # this request's answer is cut `cut_after` bytes from here
                            fate, budget = "reset", sent_down + self.cut_after
                        upstream.sendall(data)
        except OSError:  # the client or the server went away: nothing more to forward
            return
        finally:
            upstream.close()
            client.close()

    def _cut(self, request: bytes) -> bool:
        """Whether a client's bytes start a GET whose answer is to be cut (a keep-alive connection sends each request
        in one piece, its request line first)."""
        if not request.startswith(b"GET "):
            return False
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        with self._lock:
            for text, left in self.cut_gets.items():
                if left and text in line:
                    self.cut_gets[text] -= 1
                    self.counts["cut"] += 1
                    return True
        return False

    def _reset(self, client: socket.socket) -> None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        with self._lock:
            self.counts["resets_sent"] += 1

    def stop(self) -> list[str]:
        """Close the listener and every connection; returns the threads still alive after JOIN_TIMEOUT_S."""
        self._stopping.set()
        self._listener.close()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in threads if thread.is_alive()]
