"""The README's Quick start, run as a new user types it: the sample set, then the next command it prints."""
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "shapes"


def quick_start_command() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return block.strip().splitlines()[0]


def test_sample_set_is_what_its_script_draws():
    spec = importlib.util.spec_from_file_location("make_shapes", REPO / "samples" / "make_shapes.py")
    make_shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_shapes)
    files = sorted(path.relative_to(SAMPLES).as_posix() for path in SAMPLES.rglob("*.png"))
    assert len(files) == len(make_shapes.KINDS) * make_shapes.PER_KIND == 36
    for kind in make_shapes.KINDS:
        for index in range(make_shapes.PER_KIND):
            stored = np.asarray(Image.open(SAMPLES / kind / f"{index:02d}.png"))
            assert np.array_equal(stored, np.asarray(make_shapes.draw(kind, index))), (kind, index)


def test_readme_first_command_runs_offline_and_says_what_next(tmp_path):
    command = quick_start_command()
    assert command.startswith("featurize run --input samples/shapes --output out/")
    (tmp_path / "samples").symlink_to(REPO / "samples")  # the command's relative paths, from a fresh folder
    featurize = str(pathlib.Path(sys.executable).with_name("featurize"))
    argv = [featurize, *shlex.split(command)[1:]]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    table = pq.read_table(out / "features")
    keys = sorted(table.column("key").to_pylist())
    assert keys == sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.png"))
    assert np.isfinite(np.asarray(table.column("embedding").to_pylist())).all()
    # Where the store is, and what to try next: each printed command works as printed.
    assert f"-> {out}" in run.stdout or "-> out/" in run.stdout, run.stdout
    nexts = [line.strip() for line in run.stdout.splitlines() if line.strip().startswith("featurize ")]
    assert {line.split()[1] for line in nexts} >= {"inspect", "search", "index", "serve"}, run.stdout
    search = next(line for line in nexts if line.split()[1] == "search")
    found = subprocess.run([featurize, *shlex.split(search)[1:]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=240)
    assert found.returncode == 0, found.stderr[-3000:]
    query_key = pathlib.Path(shlex.split(search)[shlex.split(search).index("--query") + 1]).relative_to("samples/shapes")
    first_hit = found.stdout.split("\n----", 1)[1].splitlines()[1].split()
    assert first_hit[:3] == ["1", "1.000000", query_key.as_posix()], found.stdout
