"""Host cost per image: CPU milliseconds featurize spends outside the model, next to a bare Pillow loop.

    pip install -e '.[bench]'
    python bench/host_cost.py [--images 500] [--size 224] [--repeats 3]

Inputs are ImageNet-like JPEGs: 500x375 crops of the real photos scikit-image ships
(astronaut, coffee, chelsea, rocket, motorcycles, ...), randomly cropped, flipped, given a
camera's grain and encoded at quality 95 (the table prints their mean size; ImageNet's
average is ~110 KB).

  bare Pillow         `Image.open` + `convert("RGB")` + `resize` to SIZE (bilinear) + `np.asarray`,
                      one process, one thread: the loop a user would write (and the same with
                      `draft`, Pillow's JPEG DCT downscaling, which featurize uses by default).
  featurize (host)    `featurize run` end to end -- list, read, decode, resize, batch, Beam, write
                      Parquet, commit, manifest -- with the model replaced by one that returns
                      stored vectors at no cost, so every CPU second counted is outside the model.
                      One process (Beam's in-memory runner), CPU time (all threads) differenced
                      between N and 5N images so start-up cancels; fastest of --repeats.

The GPU question it answers: a GPU running ResNet50 at R images/s needs R x (host ms / 1000)
cores of this kind to keep it fed.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import reported  # noqa: E402 - bench/ is not a package

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Colour photographs bundled in scikit-image's wheel (no download).
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg")
WIDTH, HEIGHT = 500, 375
GRAIN = 5.0  # luminance noise sigma: with quality 95, 4:4:4, the JPEGs average ~110 KB


def make_photo_jpegs(root: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct 500x375 JPEGs cut from scikit-image's real photos."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(skimage.data.__file__).parent
    sources = [Image.open(folder / name).convert("RGB") for name in PHOTOS]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = sources[i % len(sources)]
        scale = rng.uniform(0.6, 1.0)
        width = int(min(photo.width, photo.height * 4 / 3) * scale)
        height = int(width * 3 / 4)
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        image = photo.crop((left, top, left + width, top + height)).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Film grain: a camera's noise, which the upscaled crops lost (and JPEG sizes with it).
        grain = rng.normal(0, GRAIN, (HEIGHT, WIDTH, 1))
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))
        path = root / f"img{i:05d}.jpg"
        image.save(path, quality=95, subsampling=0)
        paths.append(path)
    return paths


def bare_pillow_ms(payloads: list[bytes], size: int, draft: bool, repeats: int) -> float:
    from PIL import Image

    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for data in payloads:
            image = Image.open(io.BytesIO(data))
            if draft:
                image.draft("RGB", (size, size))
            pixels = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
            assert pixels.shape == (size, size, 3)
        best = min(best, (time.process_time() - started) * 1000 / len(payloads))
    return best


def _null_model_handler(dim: int):
    """Patch the handler so its model costs nothing: stored random vectors, the real row shapes."""
    from pipeline.model import handler, runtime

    table = np.random.default_rng(0).standard_normal((4096, dim)).astype(np.float32)

    def load_model(self):
        def predict(pixels):
            start = int(pixels[0, 0, 0, 0]) * 7 % (len(table) - len(pixels))
            return {"embedding": table[start:start + len(pixels)]}

        return runtime.FeatureModel(self._batch_size, predict)

    handler.KerasBackboneHandler.load_model = load_model


def featurize_cpu_s(folder: Path, out: Path, size: int) -> float:
    """CPU seconds (all threads of this process) of one in-memory featurize run."""
    from pipeline.job.launch import run

    shutil.rmtree(out, ignore_errors=True)
    started = time.process_time()
    run(["--input", str(folder), "--output", str(out), "--model", "ResNet50", "--weights", "none",
         "--image-size", str(size), "--batch-size", "32", "--no-progress", "--direct_running_mode=in_memory",
         "--direct_num_workers=1"])
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="N: featurize runs on N and 5N images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featurize-host-cost-"))
    try:
        paths = make_photo_jpegs(work / "all", 5 * args.images)
        (work / "small").mkdir()
        for path in paths[: args.images]:
            os.link(path, work / "small" / path.name)
        payloads = [path.read_bytes() for path in paths]
        mean_kb = np.mean([len(p) for p in payloads]) / 1000
        plain = bare_pillow_ms(payloads, args.size, draft=False, repeats=args.repeats)
        drafted = bare_pillow_ms(payloads, args.size, draft=True, repeats=args.repeats)
        _null_model_handler(2048)
        small = min(featurize_cpu_s(work / "small", work / "out", args.size) for _ in range(args.repeats))
        large = min(featurize_cpu_s(work / "all", work / "out", args.size) for _ in range(args.repeats))
        host = (large - small) * 1000 / (4 * args.images)
        best_bare = min(plain, drafted)
        print(f"{len(paths)} JPEGs {WIDTH}x{HEIGHT}, mean {mean_kb:.0f} KB, model input {args.size}x{args.size}, "
              f"1 process; featurize N={args.images} and 5N, fastest of {args.repeats}")
        print()
        print("| path | CPU ms / image | vs best bare |")
        print("| --- | --- | --- |")
        print(f"| bare Pillow: open + convert + resize | {plain:.2f} | {plain / best_bare:.2f} |")
        print(f"| bare Pillow with JPEG draft | {drafted:.2f} | {drafted / best_bare:.2f} |")
        print(f"| featurize host cost (everything but the model) | {host:.2f} | {host / best_bare:.2f} |")
        print(f"\nstart-up (N run minus its steady part): {small - host * args.images / 1000:.1f} CPU s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
