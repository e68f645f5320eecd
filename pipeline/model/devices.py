"""One model per GPU: worker processes of a multi-GPU machine pin themselves to GPUs round-robin.

A Beam worker machine runs several SDK worker processes (Dataflow: one per core by default,
or `--experiments=no_use_multiple_sdk_containers` for one; the local runner:
`--direct_num_workers`). Left alone, every process's backend grabs every GPU (TensorFlow maps
all of them and their memory). Before the backend loads, each process claims the GPU with the
fewest live claimants (ties: the lowest index) in a machine-wide claims file, under a lock, and
sets `CUDA_VISIBLE_DEVICES` to it: processes spread evenly, a restarted process takes the
place of a dead one, and a process that already sees one GPU is left as it is. With
`--model-sharing machine` the shared model is one per GPU (the model's tag names the GPU).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from typing import Callable, Mapping

from pipeline.processes import alive

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"
CLAIMS_ENV = "FEATURIZE_GPU_CLAIMS"  # where the claims file lives (tests; default under /tmp)
_BACKENDS = ("tensorflow", "jax", "torch")


def visible_gpus(environ: Mapping[str, str] = os.environ, gpus_dir: str = NVIDIA_GPUS_DIR) -> list[str]:
    """The GPUs this process may use, as `CUDA_VISIBLE_DEVICES` names them (ids or UUIDs);
    without that variable, every GPU the NVIDIA driver lists."""
    if VISIBLE_ENV in environ:
        return [item.strip() for item in environ[VISIBLE_ENV].split(",") if item.strip() and item.strip() != "-1"]
    try:
        return [str(index) for index in range(len(os.listdir(gpus_dir)))]
    except OSError:  # no NVIDIA driver: no GPUs
        return []


def choose_gpu(claims: Mapping[str, list[int]], gpus: list[str], alive: Callable[[int], bool]) -> str:
    """The GPU with the fewest live claimants; ties go to the earliest in `gpus`."""
    load = {gpu: sum(1 for pid in claims.get(gpu, ()) if alive(pid)) for gpu in gpus}
    return min(gpus, key=lambda gpu: (load[gpu], gpus.index(gpu)))


def _claims_path() -> str:
    return os.environ.get(CLAIMS_ENV) or os.path.join("/tmp", f"featurize-gpu-claims-{os.getuid()}.json")


def claim_gpu(gpus: list[str], pid: int | None = None, alive: Callable[[int], bool] = alive) -> str:
    """Record `pid` (this process) as a user of the least-claimed GPU in the machine's claims file."""
    pid = os.getpid() if pid is None else pid
    path = _claims_path()
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        claims: dict[str, list[int]] = {}
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as handle:
                claims = {str(gpu): [int(p) for p in pids] for gpu, pids in json.load(handle).items()}
        claims = {gpu: [p for p in pids if p != pid and alive(p)] for gpu, pids in claims.items()}
        gpu = choose_gpu(claims, gpus, alive)
        claims.setdefault(gpu, []).append(pid)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(claims, handle)
        os.replace(path + ".tmp", path)
    return gpu


def pin_process_to_gpu() -> str | None:
    """Before the backend loads: on a machine with several GPUs, see only the one claimed.
    Returns the GPU, or None when there is nothing to choose (no GPU, already one, or a backend
    already loaded in this process, which has mapped its devices: the launcher's own process)."""
    gpus = visible_gpus()
    if len(gpus) < 2 or any(backend in sys.modules for backend in _BACKENDS):
        return gpus[0] if len(gpus) == 1 else None
    gpu = claim_gpu(gpus)
    os.environ[VISIBLE_ENV] = gpu
    return gpu
