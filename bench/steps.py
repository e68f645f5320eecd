"""A benchmark's step in a fresh process (its peak RSS its own, nothing warm from the step before): the script
run again with `--step ARGS`, the last line of its stdout the step's JSON; and the fastest of several."""
from __future__ import annotations

import json
import subprocess
import sys


def run_step(script: str, *args: str, timeout_s: float = 3600) -> dict:
    done = subprocess.run([sys.executable, script, "--step", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fastest(runs: list[dict]) -> dict:
    return min(runs, key=lambda run: run["seconds"])
