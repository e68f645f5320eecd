"""A progress line for local runs: workers drop their counts into a folder, the launcher sums them.

Beam's local runner reports metrics only when the job ends, and its worker processes'
output is not the launcher's; a folder on the same machine is the simplest channel that
works for in-process and multi-process workers alike.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Callable, TextIO


class ProgressWriter:
    """Worker side: counts images and writes the total to its own file at most every `every` seconds."""

    def __init__(self, directory: str, every: float = 2.0):
        self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}.json")
        self._every = every
        self._count = 0
        self._written_at = time.monotonic()

    def add(self, count: int = 1) -> None:
        self._count += count
        if time.monotonic() - self._written_at >= self._every:
            self.flush()

    def flush(self) -> None:
        temporary = self._path + ".tmp"
        with open(temporary, "w") as handle:
            json.dump({"images": self._count}, handle)
        os.replace(temporary, self._path)
        self._written_at = time.monotonic()


def total(directory: str) -> int:
    count = 0
    for name in os.listdir(directory):
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as handle:
                    count += json.load(handle)["images"]
            except (OSError, ValueError, KeyError):  # a file being replaced right now
                continue
    return count


def watch(directory: str, interval: float = 5.0, stream: TextIO = sys.stderr) -> Callable[[], None]:
    """Print `featurize: N images, R images/s` every `interval` seconds; returns a stop function."""
    stop = threading.Event()
    started = time.monotonic()

    def loop() -> None:
        last_count, last_time = 0, started
        while not stop.wait(interval):
            count, now = total(directory), time.monotonic()
            if count == last_count:
                continue
            rate = (count - last_count) / (now - last_time)
            print(f"featurize: {count:,} images decoded, {rate:,.1f} images/s "
                  f"({now - started:,.0f} s)", file=stream, flush=True)
            last_count, last_time = count, now

    thread = threading.Thread(target=loop, name="featurize-progress", daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=interval + 1)

    return finish
