"""Crashing a run on purpose: hold it at a failpoint, SIGKILL its whole process group; read stores back."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
KILL_WAIT_S = 240  # start-up of two TF workers on a loaded 2-core machine, with room to spare


def read_store(out: pathlib.Path, fmt: str) -> dict[str, np.ndarray]:
    """key -> vector from the feature files as a reader sees them (every file, no manifest needed)."""
    if fmt == "parquet":
        table = pq.read_table(out / "features")
        keys = table.column("key").to_pylist()
        vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    else:
        with h5py.File(out / "features.h5") as store:
            keys, vectors = store["key"].asstr()[:].tolist(), store["embedding"][:]
    assert len(keys) == len(set(keys)), f"duplicate keys in {out}"
    return dict(zip(keys, vectors))


def error_keys(out: pathlib.Path) -> list[str]:
    return sorted(pq.read_table(out / "errors").column("key").to_pylist())


def scratch_left(folder: pathlib.Path) -> list[str]:
    """Names of the launcher scratch folders (listing spill, plan) still in `folder`, a run's TMPDIR."""
    from pipeline.files import SCRATCH_PREFIX

    return sorted(path.name for path in folder.glob(f"{SCRATCH_PREFIX}*"))


def group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return alive


def run_and_kill(args: list[str], failpoint: str, tmp_path: pathlib.Path) -> None:
    """Run featurize in its own process group, wait until it holds at `failpoint`, SIGKILL the group."""
    marker_dir = tmp_path / "failpoints"
    marker_dir.mkdir(exist_ok=True)
    env = dict(os.environ, FEATURIZE_FAILPOINTS=failpoint, FEATURIZE_FAILPOINT_DIR=str(marker_dir),
               TF_CPP_MIN_LOG_LEVEL="3")
    log = open(tmp_path / "killed-run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + KILL_WAIT_S
    try:
        while not any(marker_dir.iterdir()):
            if proc.poll() is not None:
                pytest.fail(f"featurize exited {proc.returncode} before reaching {failpoint}:\n"
                            f"{(tmp_path / 'killed-run.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{failpoint} not reached in {KILL_WAIT_S} s")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole tree, as a machine that dies
        proc.wait(timeout=30)
        log.close()
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(proc.pid), "processes of the killed run are still alive"


