"""Start-up: the README's quick start from the command to the exit, phase by phase, next to the peers'.

    python bench/startup.py [--repeats 3]

The quick start is `featurize run --input samples/shapes --output out/ --model MobileNetV3Small
--weights none --image-size 96` (36 pictures). Each row is the fastest of --repeats fresh processes:

  featurize run        the command as a user types it (`python -m pipeline run ...`, the console script's
                       code), split into phases by timestamps the script takes inside the same process:
                       imports         interpreter start -> the launcher imported (Beam; TensorFlow is not)
                       prepare         parse, check, list the input, plan the units (`launch.prepare`)
                       store           start over or resume, copy the plan into the store
                       to first unit   pipeline built and started -> the first unit starts (journal's started_at):
                                       worker processes, their imports, the model built
                       units           first unit started -> last unit committed
                       finish          -> the manifest written and the pipeline down (`launch.run` returns)
                       exit            the summary and the next steps printed, the interpreter gone
  Keras loop           the loop a user would write: import keras, build MobileNetV3Small (weights=None),
                       `load_img` + `predict` over the same 36 pictures in batches of 32
  Keras loop, tf.data  the same with `keras.utils.image_dataset_from_directory`
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import reported  # noqa: E402 - bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "shapes"
QUICK_START = ["--input", str(SAMPLES), "--model", "MobileNetV3Small", "--weights", "none", "--image-size", "96"]

# Run inside the child: `python -m pipeline run ...` with timestamps around launch's steps.
FEATURIZE = """
import json, sys, time
marks = {}
import pipeline.job.launch as launch
marks["imports"] = time.time()
def timed(name, function):
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            marks[name] = time.time()
    return wrapper
launch.prepare = timed("prepare", launch.prepare)
launch.upload_plan = timed("store", launch.upload_plan)
launch.run = timed("finish", launch.run)
from pipeline.cli import main
try:
    main()
finally:
    print(json.dumps(marks), file=sys.stderr)
"""

KERAS_LOOP = """
import os, sys
import numpy as np
import keras
model = keras.applications.MobileNetV3Small(include_top=False, weights=None, pooling="avg", input_shape=(96, 96, 3))
paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs)
images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(96, 96))) for p in paths])
vectors = model.predict(images, batch_size=32, verbose=0)
assert vectors.shape == (len(paths), 576), vectors.shape
"""

KERAS_DATASET = """
import sys
import keras
model = keras.applications.MobileNetV3Small(include_top=False, weights=None, pooling="avg", input_shape=(96, 96, 3))
data = keras.utils.image_dataset_from_directory(sys.argv[1], labels=None, image_size=(96, 96), batch_size=32,
                                                shuffle=False, verbose=False)
vectors = model.predict(data, verbose=0)
assert vectors.shape == (36, 576), vectors.shape
"""

PHASES = ("imports", "prepare", "store", "to first unit", "units", "finish", "exit")


def featurize_phases(out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    done = subprocess.run([sys.executable, "-c", FEATURIZE, "run", *QUICK_START, "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    ended = time.time()
    marks = json.loads(done.stderr.strip().splitlines()[-1])
    entries = [json.loads(p.read_text()) for p in (out / "_featurize" / "units").glob("*.json")]
    first = min(_stamp(e["started_at"]) for e in entries)
    last = max(_stamp(e["committed_at"]) for e in entries)
    moments = [started, marks["imports"], marks["prepare"], marks["store"], first, last, marks["finish"], ended]
    phases = {name: after - before for name, before, after in zip(PHASES, moments, moments[1:])}
    phases["total"] = ended - started
    return phases


def _stamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def script_seconds(code: str) -> float:
    started = time.time()
    subprocess.run([sys.executable, "-c", code, str(SAMPLES)], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row; the fastest counts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featurize-startup-"))
    try:
        runs, loops, datasets = [], [], []
        for _ in range(args.repeats):  # alternated, so the machine's load moves every row alike
            runs.append(featurize_phases(work / "out"))
            loops.append(script_seconds(KERAS_LOOP))
            datasets.append(script_seconds(KERAS_DATASET))
        best = min(runs, key=lambda phases: phases["total"])
        print(f"\nquick start (36 pictures, MobileNetV3Small 96 px, --weights none), {os.cpu_count()} cores; "
              f"fastest of {args.repeats}\n")
        print("| command | seconds |\n| --- | --- |")
        print(f"| featurize run (quick start) | {best['total']:.2f} |")
        print(f"| Keras loop (load_img + predict) | {min(loops):.2f} |")
        print(f"| Keras loop (image_dataset_from_directory) | {min(datasets):.2f} |")
        print("\n| featurize phase | seconds (its fastest run) |\n| --- | --- |")
        for name in PHASES:
            print(f"| {name} | {best[name]:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
