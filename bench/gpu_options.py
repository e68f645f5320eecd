"""GPU options on a GPU machine: precision, XLA and batch size, bare model and featurize end to end.

    python bench/gpu_options.py [--model ResNet50] [--images 2000] [--batch-sizes 64,128] [--keras-backend jax]

For each (precision, jit_compile, batch size) prints images/s of the bare model on an
in-memory uint8 batch and of featurize end to end (in-process local runner, one worker
process owning the GPU, steady state by differencing N and 2N images), and the vectors'
relative L2 error against float32 (mixed precision changes the numbers a little; the
fingerprint records it). `--keras-backend jax` measures the same on JAX (pip install -e '.[jax]',
with jax[cuda12] on the GPU machine), where jit is always on, so only jit=True rows are printed.
Exits early with a message when the backend sees no GPU.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import jpeg_sets  # noqa: E402
from machine import reported  # noqa: E402 - bench/ is not a package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="64,128")
    parser.add_argument("--keras-backend", choices=["tensorflow", "jax"], default="tensorflow")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = args.keras_backend  # before Keras loads: one backend per process
    import keras

    from pipeline.model.runtime import build_feature_model

    from pipeline.model.spec import ModelSpec
    from pipeline.job.launch import run

    if args.keras_backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        versions = f"JAX {jax.__version__}"
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        versions = f"TF {tf.__version__}"
    if not gpus:
        print(f"no GPU visible to {args.keras_backend}: this benchmark is for a GPU machine")
        return
    print(f"GPUs: {gpus}; {versions}, Keras {keras.__version__} on {keras.backend.backend()}")
    work = Path(tempfile.mkdtemp(prefix="featurize-gpu-bench-"))
    try:
        jpeg_sets(work, args.images, 2 * args.images)  # work/small and work/all
        weights = str(work / "w.weights.h5")
        getattr(keras.applications, args.model)(include_top=False, weights=None, pooling="avg",
                                                 input_shape=(args.size, args.size, 3)).save_weights(weights)
        probe = np.random.default_rng(0).integers(0, 256, (8, args.size, args.size, 3), dtype=np.uint8)
        reference = build_feature_model(ModelSpec(args.model, (args.size, args.size), weights), 8)(probe)["embedding"]
        print("| precision | jit | batch | bare img/s | featurize steady img/s | ratio | rel. L2 vs float32 |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for precision in ("float32", "mixed_float16", "mixed_bfloat16"):
            for jit in (True,) if args.keras_backend == "jax" else (False, True):
                for batch in (int(b) for b in args.batch_sizes.split(",")):
                    spec = ModelSpec(args.model, (args.size, args.size), weights, precision=precision)
                    model = build_feature_model(spec, batch, jit_compile=jit)
                    pixels = np.random.default_rng(1).integers(0, 256, (batch, args.size, args.size, 3), np.uint8)
                    model(pixels)
                    start = time.perf_counter()
                    for _ in range(10):
                        model(pixels)
                    bare = 10 * batch / (time.perf_counter() - start)
                    vectors = build_feature_model(spec, 8, jit_compile=jit)(probe)["embedding"]
                    error = float((np.linalg.norm(vectors - reference, axis=1) / np.linalg.norm(reference, axis=1)).max())
                    seconds = []
                    for source in ("small", "all"):
                        shutil.rmtree(work / "out", ignore_errors=True)
                        start = time.perf_counter()
                        run(["--input", str(work / source), "--output", str(work / "out"), "--model", args.model,
                             "--weights", weights, "--image-size", str(args.size), "--batch-size", str(batch),
                             "--precision", precision, *(["--jit-compile"] if jit else []),
                             "--keras-backend", args.keras_backend,
                             "--direct_running_mode=multi_threading", "--direct_num_workers=4", "--no-progress"])
                        seconds.append(time.perf_counter() - start)
                    steady = args.images / (seconds[1] - seconds[0])
                    print(f"| {precision} | {jit} | {batch} | {bare:.0f} | {steady:.0f} | {steady / bare:.2f} "
                          f"| {error:.1e} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
