"""GPU round-robin pinning: which GPU each worker process of a machine takes."""
import json
import pathlib
import subprocess
import sys

import pytest

from pipeline.model import devices
from pipeline.model.devices import choose_gpu, claim_gpu, visible_gpus


@pytest.mark.parametrize("value, expected", [("0,1", ["0", "1"]), ("2, 3 ,", ["2", "3"]), ("", []), ("-1", []),
                                             ("GPU-a1b2,GPU-c3d4", ["GPU-a1b2", "GPU-c3d4"])])
def test_visible_gpus_follow_cuda_visible_devices(value, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == expected


def test_without_the_variable_every_driver_gpu_is_visible(tmp_path):
    for index in range(3):
        (tmp_path / f"0000:0{index}:00.0").mkdir()
    assert visible_gpus({}, str(tmp_path)) == ["0", "1", "2"]
    assert visible_gpus({}, str(tmp_path / "no-driver")) == []


def test_the_least_claimed_live_gpu_wins_ties_to_the_first():
    alive = {1, 2, 3}.__contains__
    assert choose_gpu({}, ["0", "1"], alive) == "0"
    assert choose_gpu({"0": [1]}, ["0", "1"], alive) == "1"
    assert choose_gpu({"0": [1, 9], "1": [2, 3]}, ["0", "1"], alive) == "0"  # pid 9 is dead
    assert choose_gpu({"1": [1]}, ["1", "0"], alive) == "0"


def test_claims_spread_processes_round_robin_and_a_dead_process_frees_its_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.CLAIMS_ENV, str(tmp_path / "claims.json"))
    live = set()

    def alive(pid):
        return pid in live

    taken = []
    for pid in range(100, 105):
        live.add(pid)
        taken.append(claim_gpu(["0", "1"], pid, alive))
    assert taken == ["0", "1", "0", "1", "0"]
    live.discard(101)  # the process on GPU 1 died; a restarted one takes its place
    assert claim_gpu(["0", "1"], 105, alive) == "1"
    assert json.loads((tmp_path / "claims.json").read_text()) == {"0": [100, 102, 104], "1": [103, 105]}


def test_worker_processes_pin_themselves_to_different_gpus(tmp_path):
    """Real processes, alive at once, each pinning itself before any backend would load."""
    script = ("import os, sys; from pipeline.model.devices import pin_process_to_gpu; "
              "gpu = pin_process_to_gpu(); print(gpu, os.environ['CUDA_VISIBLE_DEVICES'], flush=True); "
              "sys.stdin.read()")  # stay alive (holding the claim) until the test closes stdin
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2", devices.CLAIMS_ENV: str(tmp_path / "claims.json"),
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    processes = []
    try:
        seen = []
        for _ in range(4):
            process = subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
            processes.append(process)
            seen.append(process.stdout.readline().split())
        assert seen == [["0", "0"], ["1", "1"], ["2", "2"], ["0", "0"]]
    finally:
        for process in processes:
            process.stdin.close()
            process.wait(timeout=30)


def test_a_process_whose_backend_already_loaded_is_left_alone(monkeypatch, tmp_path):
    import os

    import tensorflow  # noqa: F401 - loaded: it has mapped every GPU already

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv(devices.CLAIMS_ENV, str(tmp_path / "claims.json"))
    assert devices.pin_process_to_gpu() is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" and not (tmp_path / "claims.json").exists()
