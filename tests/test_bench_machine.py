"""bench/machine.py: every benchmark's output says what it ran on, and the step processes a benchmark
starts add nothing to the JSON line their parent reads."""
import importlib.metadata
import os
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"
SCRIPT = "from machine import reported\nwith reported():\n    print('{\"rows\": 1}')\n"


def run(env):
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=BENCH, env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout.splitlines()


def test_a_benchmark_names_its_cores_load_and_versions_and_its_steps_print_only_their_result():
    env = {name: value for name, value in os.environ.items() if name != "FEATURIZE_BENCH_CHILD"}
    first, result, last = run(env)
    assert first.startswith(f"machine: {os.cpu_count()} cores, load average ")
    for name in ("pillow", "apache-beam", "tensorflow", "keras"):
        assert f"{name} {importlib.metadata.version(name)}" in first
    assert result == '{"rows": 1}' and last.startswith("load average at the end: ")
    assert run(dict(env, FEATURIZE_BENCH_CHILD="1")) == ['{"rows": 1}']  # a step process of a benchmark
