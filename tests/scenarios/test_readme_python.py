"""The README's Python examples run as written, on the sample set, from a fresh folder (no network)."""
import ast
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def python_block(starts_with: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    return next(block for block in blocks if block.startswith(starts_with))


def run_python(code: str, cwd: pathlib.Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    (folder / "samples").symlink_to(REPO / "samples")
    return folder


def test_pipeline_run_then_the_store_examples(folder):
    out = run_python(python_block("import pipeline\nmanifest = pipeline.run("), folder)
    counts = ast.literal_eval(out.strip())
    assert (counts["inputs"], counts["rows"], counts["errors"]) == (36, 36, 0), out
    run_python(python_block("import os, pandas as pd"), folder)
    # FeatureStore's tour, then what it computed, as JSON to compare.
    tour = python_block("from pipeline import FeatureStore")
    out = run_python(tour + "\nimport json\nprint(json.dumps([len(store), store.dim, result.keys[0][0], "
                     "store.embed([open('samples/shapes/circles/00.png', 'rb').read()])[0].tolist(), "
                     "store.get('circles/00.png').tolist()]))", folder)
    count, dim, first, embedded, stored = json.loads(out.strip().splitlines()[-1])
    assert (count, first) == (36, "circles/00.png") and dim == len(stored) > 0
    assert np.allclose(embedded, stored, rtol=1e-5, atol=1e-6)  # the store's own model embeds new images


def test_hdf5_example_reads_an_hdf5_store(folder, tmp_path):
    (tmp_path / "samples").symlink_to(REPO / "samples")
    run_python("import pipeline; pipeline.run(['--input', 'samples/shapes', '--output', 'out/', '--model', "
               "'MobileNetV3Small', '--weights', 'none', '--image-size', '96', '--format', 'hdf5'])", tmp_path)
    out = run_python(python_block("import h5py") + "    print(*matrix.shape, len(keys))\n", tmp_path)
    rows, dim, keys = out.split()
    assert rows == keys == "36" and int(dim) > 0, out


def test_a_beam_graph_of_your_own(folder):
    out = run_python(python_block("import apache_beam as beam"), folder)
    keys = sorted(line.split()[0] for line in out.splitlines() if line.endswith(")"))
    assert keys == sorted(p.relative_to(REPO / "samples/shapes").as_posix()
                          for p in (REPO / "samples/shapes").rglob("*.png")), out
