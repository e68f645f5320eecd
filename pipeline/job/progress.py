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
    """Worker side: counts images and units, writes the totals to its own file at most every `every` s."""

    def __init__(self, directory: str, every: float = 2.0):
        self._path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}.json")
        self._every = every
        self._images = self._units = 0
        self._written_at = time.monotonic()

    def add(self, count: int = 1) -> None:
        self._images += count
        if time.monotonic() - self._written_at >= self._every:
            self.flush()

    def unit_done(self) -> None:
        self._units += 1
        self.flush()

    def flush(self) -> None:
        temporary = self._path + ".tmp"
        with open(temporary, "w") as handle:
            json.dump({"images": self._images, "units": self._units}, handle)
        os.replace(temporary, self._path)
        self._written_at = time.monotonic()


def total(directory: str) -> tuple[int, int]:
    """(images, units) done, summed over every worker's file."""
    images = units = 0
    for name in os.listdir(directory):
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as handle:
                    counts = json.load(handle)
            except (OSError, ValueError):  # a file being replaced right now
                continue
            images, units = images + counts.get("images", 0), units + counts.get("units", 0)
    return images, units


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(images: int, units: int, elapsed: float, rate: float,
                  total_images: int | None, total_units: int) -> str:
    """`featurize: 1,200 of 5,000 inputs (24%), 310 images/s, units 3/12, ETA 0m12s`.

    The ETA comes from the images left when their total is known (files), else from the
    units left at the images per unit seen so far (tar shards).
    """
    done = f"{images:,} of {total_images:,} inputs ({images / max(total_images, 1):.0%})" \
        if total_images is not None else f"{images:,} images"
    left = None
    if rate > 0 and total_images is not None:
        left = max(total_images - images, 0) / rate
    elif rate > 0 and units:
        left = max(total_units - units, 0) * (images / units) / rate
    eta = f", ETA {_duration(left)}" if left is not None else ""
    return f"featurize: {done}, {rate:,.1f} images/s, units {units}/{total_units}{eta} ({_duration(elapsed)})"


def watch(directory: str, total_images: int | None, total_units: int, interval: float = 5.0,
          stream: TextIO = sys.stderr) -> Callable[[], None]:
    """Print a progress line every `interval` seconds while work advances; returns a stop function."""
    stop = threading.Event()
    started = time.monotonic()

    def loop() -> None:
        last_images, last_time = 0, started
        while not stop.wait(interval):
            (images, units), now = total(directory), time.monotonic()
            if images == last_images:
                continue
            rate = (images - last_images) / (now - last_time)
            print(progress_line(images, units, now - started, rate, total_images, total_units),
                  file=stream, flush=True)
            last_images, last_time = images, now

    thread = threading.Thread(target=loop, name="featurize-progress", daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(timeout=interval + 1)

    return finish
