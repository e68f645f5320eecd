"""keras-hub transformers through featurize against the bare keras-hub model, in one run.

    python bench/hub_speed.py [--models dinov2_small,clip_b32] [--images 40] [--repeats 2]

Each model is built offline from keras-hub's constructors at its published architecture (DINOv2-S/14 at
224, CLIP ViT-B/32 at 224), with random weights (speed does not depend on their values), and written
with `save_to_preset`; then, per model, images/s of
  (a) the bare model: keras-hub's image converter + the backbone's image embedding in a tf.function on
      in-memory uint8 batches of 16, in one process with every core, and as one single-thread process
      per core (summed): the better of the two is the reference;
  (c) `featurize run --model hub:FOLDER` end to end with its defaults (local runner, every core) on
      photo-like JPEGs of 320x240 to 1600x1200, steady rate from N and 5N images (fastest of --repeats
      each: start-up varies by seconds), so N / (t(5N) - t(N)) * 4.
Prints a Markdown table with the ratio (c) / best (a) and the load average before and after.
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


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import jpeg_sets  # noqa: E402 - bench/ is not a package
from machine import reported  # noqa: E402 - bench/ is not a package

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def normalisation(mean, std):
    return {"scale": [1 / (255 * s) for s in std], "offset": [-m / s for m, s in zip(mean, std)]}


def dinov2_small(keras_hub):
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=12, hidden_dim=384, num_heads=6, intermediate_dim=1536,
        image_shape=(224, 224, 3), position_embedding_shape=(518, 518, 3))
    return backbone, keras_hub.layers.DINOV2ImageConverter(
        image_size=(224, 224), interpolation="bicubic", antialias=True, **normalisation(IMAGENET_MEAN, IMAGENET_STD))


def clip_b32(keras_hub):
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=32, hidden_dim=768, num_layers=12, num_heads=12,
                                               intermediate_dim=3072, image_shape=(224, 224, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=49408, embedding_dim=512, hidden_dim=512, num_layers=12,
                                           num_heads=8, intermediate_dim=2048, max_sequence_length=77)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=512)
    return backbone, keras_hub.layers.CLIPImageConverter(image_size=(224, 224), interpolation="bicubic",
                                                         **normalisation(CLIP_MEAN, CLIP_STD))


MODELS = {"dinov2_small": dinov2_small, "clip_b32": clip_b32}
BARE = """
import json, os, sys, time
import numpy as np, keras, keras_hub, tensorflow as tf
folder, batches, seconds_out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
converter = keras_hub.layers.ImageConverter.from_preset(folder)
backbone = keras_hub.models.Backbone.from_preset(folder)
embed = getattr(backbone, "get_vision_embeddings", None) or (lambda x: backbone(x)[:, 0, :])
height, width = converter.image_size
@tf.function(input_signature=[tf.TensorSpec([16, height, width, 3], tf.uint8)])
def forward(pixels):
    return embed(converter(tf.cast(pixels, tf.float32)))
batch = np.random.default_rng(1).integers(0, 256, (16, height, width, 3), dtype=np.uint8)
forward(batch); forward(batch)
start = time.perf_counter()
for _ in range(batches):
    forward(batch).numpy()
json.dump({"images": 16 * batches, "seconds": time.perf_counter() - start}, open(seconds_out, "w"))
"""


def bare_rate(folder: str, work: Path, processes: int, threads: int | None, batches: int) -> float:
    """Images/s of `processes` concurrent bare-model processes (summed over their overlapping runs)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS=str(threads))
    outs = [work / f"bare-{processes}-{i}.json" for i in range(processes)]
    running = [subprocess.Popen([sys.executable, "-c", BARE, folder, str(batches), str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for out in outs]
    for process in running:
        if process.wait(timeout=1800) != 0:
            raise RuntimeError("a bare-model process failed")
    return sum(json.load(open(out))["images"] / json.load(open(out))["seconds"] for out in outs)


def featurize_seconds(folder: str, source: Path, out: Path) -> float:
    from pipeline.job.launch import run

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = run(["--input", str(source), "--output", str(out), "--model", f"hub:{folder}", "--no-progress",
                    "--batch-size", "16"])
    elapsed = time.perf_counter() - start
    assert manifest["counts"]["errors"] == 0, manifest["counts"]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dinov2_small,clip_b32")
    parser.add_argument("--images", type=int, default=40, help="N: featurize runs on N and 5N images")
    parser.add_argument("--repeats", type=int, default=2, help="featurize runs per size; the fastest counts")
    parser.add_argument("--batches", type=int, default=6, help="bare-model batches of 16 timed per process")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_hub

    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="featurize-hub-bench-"))
    try:
        small, everything = jpeg_sets(work, args.images, 5 * args.images)
        rows = []
        for name in args.models.split(","):
            keras.utils.set_random_seed(0)
            backbone, converter = MODELS[name](keras_hub)
            folder = str(work / name)
            backbone.save_to_preset(folder)
            converter.save_to_preset(folder)
            del backbone
            one = bare_rate(folder, work, 1, None, args.batches)
            per_core = bare_rate(folder, work, cores, 1, args.batches)
            t_n = min(featurize_seconds(folder, small, work / "out") for _ in range(args.repeats))
            t_5n = min(featurize_seconds(folder, everything, work / "out") for _ in range(args.repeats))
            steady = 4 * args.images / (t_5n - t_n)
            rows.append((name, one, per_core, steady, t_n - args.images / steady))
        load_after = os.getloadavg()
        print(f"\n{cores} cores; N={args.images} and 5N JPEGs 320x240..1600x1200 at 224 px; random weights; "
              f"featurize timings fastest of {args.repeats}; load average {load_before[0]:.2f} before, "
              f"{load_after[0]:.2f} after\n")
        print("| model | (a) bare, 1 process img/s | (a) bare, 1 single-thread process per core img/s "
              "| (c) featurize steady img/s | (c) / best (a) | featurize start-up s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, one, per_core, steady, startup in rows:
            print(f"| {name} | {one:.1f} | {per_core:.1f} | {steady:.1f} | {steady / max(one, per_core):.2f} "
                  f"| {startup:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
