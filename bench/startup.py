"""Start-up: the README's quick start from the command to the exit, phase by phase, next to the peers'.

    python bench/startup.py [--repeats 3] [--limit] [--limit-models MobileNetV3Small,ResNet50]

The quick start is `featurize run --input samples/shapes --output out/ --model MobileNetV3Small
--weights none --image-size 96` (36 pictures). Each row is the fastest of --repeats fresh processes:

  featurize run        the command as a user types it (the console script's `pipeline.__main__.entry`),
                       split into phases by timestamps the script takes inside the same process:
                       imports         interpreter start -> the launcher imported (Beam; TensorFlow is not)
                       prepare         parse, check, list the input, plan the units (`launch.prepare`)
                       store           start over or resume, copy the plan into the store
                       to first unit   pipeline built and started -> the first unit starts (journal's started_at):
                                       worker processes, their imports, the model built
                       units           first unit started -> last unit committed
                       finish          -> the manifest written and the pipeline down (`launch.run` returns)
                       exit            the summary and the next steps printed, the interpreter gone
  at the limit         `--limit`: SMALL_RUN_INPUTS photo-like JPEGs (bench/throughput.py's, 320x240 to 1600x1200)
                       at 224 px, the largest run featurize starts in its own process, run both ways (in the
                       launcher's process, and on a worker process per core as a larger run is), per model of
                       `--limit-models`: where the two cross is where the limit belongs
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

# Run inside the child: the console script's `entry` with timestamps around launch's steps.
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
run = timed("finish", launch.run)
def reported_run(*args, **kwargs):
    try:
        return run(*args, **kwargs)
    finally:
        print(json.dumps(marks), file=sys.stderr, flush=True)
launch.run = reported_run
from pipeline.__main__ import entry
entry()
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
    marks = json.loads(next(line for line in done.stderr.splitlines() if line.startswith('{"imports"')))
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


def limit_seconds(model: str, folder: Path, out: Path, mode: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--input", str(folder), "--output", str(out), "--model",
                    model, "--weights", "none", "--image-size", "224", "--no-progress", *mode], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.time() - started


def limit_table(work: Path, models: list[str], repeats: int) -> None:
    from throughput import make_jpegs  # noqa: E402

    from pipeline.job.runner import SMALL_RUN_INPUTS

    folder = work / "limit"
    make_jpegs(folder, SMALL_RUN_INPUTS)
    cores = os.cpu_count() or 1
    modes = {"in this process": ["--direct_running_mode=in_memory"],
             f"{cores} worker processes": ["--direct_running_mode=multi_processing", f"--direct_num_workers={cores}"]}
    print(f"\n{SMALL_RUN_INPUTS} JPEGs (the small-run limit) at 224 px, seconds from the command to the exit, "
          f"fastest of {repeats} alternated\n")
    print("| model | " + " | ".join(modes) + " |\n| --- |" + " --- |" * len(modes))
    for model in models:
        best = dict.fromkeys(modes, float("inf"))
        for _ in range(repeats):
            for name, mode in modes.items():
                best[name] = min(best[name], limit_seconds(model, folder, work / "out", mode))
        print(f"| {model} | " + " | ".join(f"{seconds:.1f}" for seconds in best.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row; the fastest counts")
    parser.add_argument("--limit", action="store_true", help="also time a run at the small-run limit both ways")
    parser.add_argument("--limit-models", default="MobileNetV3Small,ResNet50")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
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
        if args.limit:
            limit_table(work, args.limit_models.split(","), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
