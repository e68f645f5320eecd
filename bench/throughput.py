"""Throughput of featurize against the bare model and a naive Keras loop, in one run.

    python bench/throughput.py [--images 300] [--models ResNet50,MobileNetV3Small] [--size 224]

Prints, per model, images/s of
  (a) the bare model: a tf.function on in-memory uint8 batches of 32 (preprocessing included),
  (b) a naive loop: keras.utils.load_img + preprocess_input + model.predict per image,
  (c) featurize end to end with its defaults (local runner, every core),
and the ratios against (a). Start-up (worker spawn, TF import, model build, first compile)
is excluded from (c) by differencing: featurize runs on N and on 2N images and the steady
rate is N / (t(2N) - t(N)); the start-up estimate is t(N) - N / steady rate. Start-up
varies by seconds from run to run, so each featurize timing is the fastest of --repeats
runs, and N should make the steady part long against that (small models want N >= 1000).
Weights are random (saved once to a file, so every worker loads the same model): speed
does not depend on their values.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import reported  # noqa: E402 - bench/ is not a package

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_jpegs(root: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth gradients + texture), 320x240 to 1600x1200, like a camera dump."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (640, 480), (800, 600), (1024, 768), (1600, 1200)]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 8, (height, width, 3))
        pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
        path = root / f"img{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=88)
        paths.append(path)
    return paths


def jpeg_sets(work: Path, small: int, large: int) -> tuple[Path, Path]:
    """`large` photo-like JPEGs in work/all, the first `small` of them hard-linked into work/small: the N and
    kN inputs of a differenced measurement."""
    paths = make_jpegs(work / "all", large)
    (work / "small").mkdir()
    for path in paths[:small]:
        os.link(path, work / "small" / path.name)
    return work / "small", work / "all"


def bare_model_rate(name: str, weights: str, size: int, batches: int = 8) -> float:
    from pipeline.model.runtime import build_feature_model
    from pipeline.model.spec import ModelSpec

    model = build_feature_model(ModelSpec(name, (size, size), weights), batch_size=32)
    batch = np.random.default_rng(1).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    model(batch)  # warm
    start = time.perf_counter()
    for _ in range(batches):
        model(batch)
    return 32 * batches / (time.perf_counter() - start)


def naive_loop_rate(name: str, weights: str, size: int, paths: list[Path]) -> float:
    import importlib

    import keras

    from pipeline.model import backbones

    backbone = backbones.BACKBONES[name]
    model = getattr(keras.applications, name)(include_top=False, weights=None, pooling="avg",
                                               input_shape=(size, size, 3))
    model.load_weights(weights)
    preprocess = importlib.import_module(f"keras.applications.{backbone.module}").preprocess_input
    model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)  # warm
    start = time.perf_counter()
    for path in paths:
        x = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))
        model.predict(preprocess(x[None]), verbose=0)
    return len(paths) / (time.perf_counter() - start)


def featurize_seconds(name: str, weights: str, size: int, source: Path, out: Path) -> float:
    from pipeline.job.launch import run

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = run(["--input", str(source), "--output", str(out), "--model", name, "--weights", weights,
                    "--image-size", str(size), "--no-progress"])
    elapsed = time.perf_counter() - start
    assert manifest["counts"]["errors"] == 0, manifest["counts"]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="N: featurize runs on N and 2N images")
    parser.add_argument("--models", default="ResNet50,MobileNetV3Small")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--naive-images", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2, help="featurize runs per size; the fastest counts")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    work = Path(tempfile.mkdtemp(prefix="featurize-bench-"))
    try:
        half, everything = jpeg_sets(work, args.images, 2 * args.images)
        paths = sorted(everything.iterdir())
        rows = []
        for name in args.models.split(","):
            weights = str(work / f"{name}.weights.h5")
            getattr(keras.applications, name)(include_top=False, weights=None, pooling="avg",
                                              input_shape=(args.size, args.size, 3)).save_weights(weights)
            bare = bare_model_rate(name, weights, args.size)
            naive = naive_loop_rate(name, weights, args.size, paths[: args.naive_images])
            t_n = min(featurize_seconds(name, weights, args.size, half, work / "out") for _ in range(args.repeats))
            t_2n = min(featurize_seconds(name, weights, args.size, everything, work / "out")
                       for _ in range(args.repeats))
            steady = args.images / (t_2n - t_n)
            startup = t_n - args.images / steady
            rows.append((name, bare, naive, steady, startup, t_2n))
        print(f"\n{os.cpu_count()} cores; N={args.images} JPEGs 320x240..1600x1200; input {args.size} px; "
              f"featurize timings: fastest of {args.repeats}\n")
        print("| model | (a) bare model img/s | (b) naive loop img/s (b/a) | (c) featurize steady img/s (c/a) "
              "| featurize start-up s | featurize 2N wall s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, bare, naive, steady, startup, wall in rows:
            print(f"| {name} | {bare:.1f} | {naive:.1f} ({naive / bare:.2f}) | {steady:.1f} ({steady / bare:.2f}) "
                  f"| {startup:.1f} | {wall:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
