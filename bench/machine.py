"""What a benchmark ran on, printed around its tables: cores, load average and the versions that move
its numbers, so a figure that changed can be told from the machine's noise (this machine is shared).

Every script here runs its `main()` inside `reported()`. The child processes a script starts for its
steps inherit BENCH_CHILD_ENV and print nothing more (their last stdout line is the parent's JSON).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from typing import Iterator

PACKAGES = ("pillow", "apache-beam", "tensorflow", "keras", "keras-hub", "jax", "numpy", "pyarrow", "faiss-cpu")
BENCH_CHILD_ENV = "FEATURIZE_BENCH_CHILD"


def versions() -> dict[str, str]:
    """The installed version of each of PACKAGES that is installed."""
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def machine_line() -> str:
    packages = ", ".join(f"{name} {version}" for name, version in versions().items())
    return (f"machine: {os.cpu_count()} cores, load average {load_average()} (1, 5, 15 min); "
            f"Python {platform.python_version()}; {packages}")


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """The machine line before the script's output and the load average after it (parent process only)."""
    child = bool(os.environ.get(BENCH_CHILD_ENV))
    if not child:
        print(machine_line(), flush=True)
        os.environ[BENCH_CHILD_ENV] = "1"
    try:
        yield
    finally:
        if not child:
            print(f"load average at the end: {load_average()}", flush=True)
