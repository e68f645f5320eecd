"""Ctrl-C on a real local run with two worker processes, as a terminal sends it (SIGINT to the whole
process group): exit 130 within seconds, one sentence with what is committed and the command that
goes on, no traceback, no worker left; a second Ctrl-C stops at once; the printed command resumes
to a store that holds every key exactly once.

Workers are held at the `unit-commit` failpoint (pipeline.job.journal.failpoint): a held worker has
renamed a unit's files into features/ but not written its journal entry, the half-written state a
Ctrl-C must leave unclaimed.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.job.entries import UnitEntry
from tests.helpers.runs import TEST_MODEL, TEST_SIZE
from tests.helpers.crash import KILL_WAIT_S, REPO, group_alive, scratch_left
from tests.helpers.samples import _encode, _rgb

IMAGES, BATCH = 32, 4  # 8 units of 4 images: some committed, some held, some left for --resume
STOP_S = 10  # the promise: a Ctrl-C ends the run within 10 s
STOPPED = re.compile(r"featurize: stopped by Ctrl-C with (\d+) of (\d+) units committed in (.+); "
                     r"to go on, run: (.+)")
AT_ONCE = re.compile(r"featurize: stopped by Ctrl-C at once; the units committed so far stay in the store; "
                     r"to go on, run: (.+)")


def _environment(tmp_path: pathlib.Path, failpoints: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "FEATURIZE_VERBOSE", "FEATURIZE_FAILPOINTS")}
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `featurize` itself
    if failpoints:
        (tmp_path / "failpoints").mkdir(exist_ok=True)
        env.update(FEATURIZE_FAILPOINTS=failpoints, FEATURIZE_FAILPOINT_DIR=str(tmp_path / "failpoints"))
    (tmp_path / "launcher-tmp").mkdir(exist_ok=True)  # the launcher's scratch (listing spill, plan) lands here
    env.update(TMPDIR=str(tmp_path / "launcher-tmp"), **extra)
    return env


def _journal(out: pathlib.Path) -> list[UnitEntry]:
    return [UnitEntry.from_json(json.loads(path.read_text()))
            for path in sorted((out / "_featurize" / "units").glob("*.json"))]


def _unit_files(out: pathlib.Path) -> set[str]:
    return {f"{folder}/{path.name}" for folder in ("features", "errors") if (out / folder).exists()
            for path in (out / folder).iterdir()}


def _wait(condition, proc: subprocess.Popen, what: str, timeout: float = KILL_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"featurize exited {proc.returncode} before {what}:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout} s")
        time.sleep(0.05)


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _ctrl_c(proc: subprocess.Popen) -> tuple[str, str, float]:
    """SIGINT to the run's process group, as a terminal sends it: its output and the seconds it took to end."""
    pressed = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=STOP_S)
    return stdout, stderr, time.monotonic() - pressed


def _kill(proc: subprocess.Popen) -> None:
    """Whatever happened: no process of the run is left."""
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _no_process_left(pgid: int) -> bool:
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not group_alive(pgid)


def test_ctrl_c_stops_a_two_worker_run_and_its_printed_command_goes_on(small_weights, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    keys = [f"{i:02d}.jpg" for i in range(IMAGES)]
    for i, key in enumerate(keys):
        (photos / key).write_bytes(_encode(_rgb(32, 32, 300 + i), "JPEG"))
    out = tmp_path / "out"
    command = ["featurize", "run", "--input", str(photos), "--output", str(out), "--model", TEST_MODEL,
               "--weights", small_weights, "--image-size", str(TEST_SIZE), "--batch-size", str(BATCH),
               "--no-progress", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    marker = tmp_path / "failpoints"

    # 1. One Ctrl-C, once a unit is committed and a worker holds in its next commit. A user who silenced
    #    TensorFlow (TF_CPP_MIN_LOG_LEVEL=2) sees no more than anyone else.
    proc = _start(command, _environment(tmp_path, "unit-commit@2", TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        _wait(lambda: _journal(out) and (marker / "unit-commit").exists(), proc,
              "a unit was committed and a worker held in the next commit")
        stdout, stderr, took = _ctrl_c(proc)
    finally:
        _kill(proc)
    print(f"one Ctrl-C: exit {proc.returncode} after {took:.2f} s")
    assert proc.returncode == 130, stderr
    assert took < STOP_S
    assert "Traceback" not in stderr and not stdout, stderr + stdout
    [line] = stderr.strip().splitlines()
    stopped = STOPPED.fullmatch(line)
    assert stopped, line
    journal = _journal(out)
    assert int(stopped[1]) == len(journal) >= 1 and int(stopped[2]) == IMAGES // BATCH
    assert stopped[3] == str(out)
    assert _no_process_left(proc.pid), "workers of the stopped run are still alive"
    assert scratch_left(tmp_path / "launcher-tmp") == []  # the exit after a stop skips finalizers: the scratch went first
    # Nothing half-written is claimed: every file in the store is named by a journal entry (the held
    # worker's renamed files were deleted once no worker was left), and every entry's files are there.
    named = {path for entry in journal for path in entry.files.values()}
    assert _unit_files(out) == named
    assert not list((out / "_featurize" / "tmp").glob("*"))
    assert not (out / "manifest.json").exists()
    resume = shlex.split(stopped[4])
    assert resume == [*command, "--resume"]
    committed_first = len(journal)

    # 2. The printed command, stopped again: the orderly stop is held (failpoint `ctrl-c-stop`), and a
    #    second Ctrl-C ends it at once, the held worker's renamed files left unclaimed for --resume.
    for name in ("unit-commit", "ctrl-c-stop"):
        (marker / name).unlink(missing_ok=True)
    proc = _start(resume, _environment(tmp_path, "unit-commit@2,ctrl-c-stop"))
    try:
        _wait(lambda: len(_journal(out)) > committed_first and (marker / "unit-commit").exists(), proc,
              "the resumed run committed a unit and held in the next commit")
        os.killpg(proc.pid, signal.SIGINT)
        _wait(lambda: (marker / "ctrl-c-stop").exists(), proc, "the orderly stop began", timeout=STOP_S)
        stdout, stderr, took = _ctrl_c(proc)
    finally:
        _kill(proc)
    print(f"second Ctrl-C: exit {proc.returncode} after {took:.2f} s")
    assert proc.returncode == 130, stderr
    assert took < 3, f"a second Ctrl-C took {took:.1f} s"
    assert "Traceback" not in stderr and not stdout, stderr + stdout
    [line] = stderr.strip().splitlines()
    at_once = AT_ONCE.fullmatch(line)
    assert at_once, line
    assert shlex.split(at_once[1]) == resume
    assert _no_process_left(proc.pid), "workers of the run stopped at once are still alive"
    assert scratch_left(tmp_path / "launcher-tmp") == []
    journal = _journal(out)
    assert _unit_files(out) > {path for entry in journal for path in entry.files.values()}, \
        "the worker held in its commit should have left files that no entry names"

    # 3. The printed command again, undisturbed: every key exactly once, the committed units reused.
    done = subprocess.run(resume, cwd=REPO, env=_environment(tmp_path), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["reused"] == sum(entry.inputs for entry in journal) >= 2 * BATCH
    assert manifest["counts"]["rows"] == IMAGES and manifest["counts"]["errors"] == 0
    table = pq.read_table(out / "features")
    assert sorted(table.column("key").to_pylist()) == keys  # each key once: no orphan was read back
    assert table.column("embedding").null_count == 0
