"""Host cost per image: CPU milliseconds featurize spends outside the model, next to a bare Pillow loop,
for each place the resize can run (--resize-in host, the default, and --resize-in model).

    pip install -e '.[bench]'
    python bench/host_cost.py [--images 200] [--size 224] [--repeats 3] [--qualities 95,75] [--jpeg-size 500x375]

Inputs are ImageNet-like JPEGs: 500x375 (--jpeg-size) crops of the real photos scikit-image ships
(astronaut, coffee, chelsea, rocket, motorcycles, ...), randomly cropped, flipped, given a
camera's grain and encoded at each of --qualities: 95 with 4:4:4 chroma (this bench's first
table, ~120 KB, ImageNet's average is ~110 KB) and 75 with 4:2:0, Pillow's defaults (what
"default quality" means for a JPEG written by Pillow, and what most cameras and web images are closer to).

  bare Pillow         `Image.open` + `draft` (Pillow's JPEG DCT downscaling, which featurize uses by
                      default) + `convert("RGB")` + `resize` to SIZE (bilinear) + `np.asarray`, one process,
                      one thread: the loop a user would write; and the same without the resize (decode only).
  featurize (host)    `featurize run` end to end -- list, read, decode, resize, batch, Beam, write
                      Parquet, commit, manifest -- with the model replaced by one that returns
                      stored vectors at no cost, so every CPU second counted is outside the model.
                      One process (Beam's in-memory runner), CPU time (all threads, the decode thread
                      included) differenced between N and 5N images so start-up cancels; fastest of --repeats.
                      Once with --resize-in host (bit parity with Keras's loader), once with --resize-in model
                      (the host decodes onto the model's canvas; the resize runs in the model, on the GPU).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import reported  # noqa: E402 - bench/ is not a package

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Colour photographs bundled in scikit-image's wheel (no download).
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg")
WIDTH, HEIGHT = 500, 375
GRAIN = 5.0  # luminance noise sigma: with quality 95, 4:4:4, the JPEGs average ~110 KB


def make_photo_jpegs(root: Path, count: int, seed: int = 0, quality: int = 95,
                     size: tuple[int, int] = (WIDTH, HEIGHT)) -> list[Path]:
    """`count` distinct JPEGs of `size` (width, height; 4:3) cut from scikit-image's real photos (4:4:4 at
    quality 95, else Pillow's default 4:2:0)."""
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
        image = photo.crop((left, top, left + width, top + height)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Film grain: a camera's noise, which the upscaled crops lost (and JPEG sizes with it).
        grain = rng.normal(0, GRAIN, (size[1], size[0], 1))
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))
        path = root / f"img{i:05d}.jpg"
        image.save(path, quality=quality, **({"subsampling": 0} if quality == 95 else {}))
        paths.append(path)
    return paths


def bare_pillow_ms(payloads: list[bytes], size: int, resize: bool, repeats: int) -> float:
    from PIL import Image

    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for data in payloads:
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
            if resize:
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
            assert pixels.ndim == 3
        best = min(best, (time.process_time() - started) * 1000 / len(payloads))
    return best


def _null_model_handler(dim: int):
    """Patch the handler so its model costs nothing: stored random vectors, the real row shapes."""
    from pipeline.model import handler, runtime

    table = np.random.default_rng(0).standard_normal((4096, dim)).astype(np.float32)

    def load_model(self):
        def predict(pixels, *geometry):  # --resize-in model: canvases and their geometry
            start = int(pixels[0, 0, 0, 0]) * 7 % (len(table) - len(pixels))
            return {"embedding": table[start:start + len(pixels)]}

        return runtime.FeatureModel(self._batch_size, predict)

    handler.KerasBackboneHandler.load_model = load_model


def featurize_cpu_s(folder: Path, out: Path, size: int, resize_in: str) -> float:
    """CPU seconds (all threads of this process) of one in-memory featurize run."""
    from pipeline.job.launch import run

    shutil.rmtree(out, ignore_errors=True)
    started = time.process_time()
    run(["--input", str(folder), "--output", str(out), "--model", "ResNet50", "--weights", "none",
         "--image-size", str(size), "--batch-size", "32", "--no-progress", "--direct_running_mode=in_memory",
         "--direct_num_workers=1", "--resize-in", resize_in])
    return time.process_time() - started


@dataclass(frozen=True)
class QualityRow:
    """One JPEG quality's measurements, CPU ms per image."""
    quality: int
    mean_kb: float
    decode: float  # bare Pillow, draft + convert
    bare: float  # bare Pillow, draft + convert + resize
    host: float  # featurize --resize-in host
    model: float  # featurize --resize-in model
    startup_s: float  # the host run's start-up, CPU s


def measure(work: Path, quality: int, args: argparse.Namespace) -> QualityRow:
    folder = work / f"q{quality}"
    paths = make_photo_jpegs(folder / "all", 5 * args.images, quality=quality, size=args.jpeg_size)
    (folder / "small").mkdir()
    for path in paths[: args.images]:
        os.link(path, folder / "small" / path.name)
    payloads = [path.read_bytes() for path in paths]
    decode = bare_pillow_ms(payloads, args.size, resize=False, repeats=args.repeats)
    bare = bare_pillow_ms(payloads, args.size, resize=True, repeats=args.repeats)
    per_image = {}
    for resize_in in ("host", "model"):
        # Interleaved, N then 5N, fastest of each: the machine's load moves both alike.
        small = large = float("inf")
        for _ in range(args.repeats):
            small = min(small, featurize_cpu_s(folder / "small", work / "out", args.size, resize_in))
            large = min(large, featurize_cpu_s(folder / "all", work / "out", args.size, resize_in))
        per_image[resize_in] = (large - small) * 1000 / (4 * args.images), small
    host, small = per_image["host"]
    return QualityRow(quality, float(np.mean([len(p) for p in payloads]) / 1000), decode, bare, host,
                      per_image["model"][0], small - host * args.images / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="N: featurize runs on N and 5N images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qualities", default="95,75", help="JPEG qualities of the inputs, comma-separated")
    parser.add_argument("--jpeg-size", default=(WIDTH, HEIGHT), type=lambda s: tuple(int(v) for v in s.split("x")),
                        help=f"WIDTHxHEIGHT of the inputs (default {WIDTH}x{HEIGHT}; 640x480 is drafted by 1/2 "
                             f"for 224)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featurize-host-cost-"))
    try:
        _null_model_handler(2048)
        rows = [measure(work, int(quality), args) for quality in args.qualities.split(",")]
        width, height = args.jpeg_size
        print(f"JPEGs {width}x{height}, model input {args.size}x{args.size}, 1 process; featurize N={args.images} "
              f"and 5N, fastest of {args.repeats}; CPU ms per image, and the ratio to bare Pillow with its resize")
        print()
        print("| JPEG quality (mean KB) | bare Pillow: decode (draft) | bare Pillow: decode + resize "
              "| featurize --resize-in host (default) | featurize --resize-in model |")
        print("| --- | --- | --- | --- | --- |")
        for row in rows:
            print(f"| {row.quality} ({row.mean_kb:.0f} KB) | {row.decode:.2f} ({row.decode / row.bare:.2f}) "
                  f"| {row.bare:.2f} (1.00) | {row.host:.2f} ({row.host / row.bare:.2f}) "
                  f"| {row.model:.2f} ({row.model / row.bare:.2f}) |")
        print("\nstart-up (N run minus its steady part): "
              + ", ".join(f"q{row.quality} {row.startup_s:.1f} CPU s" for row in rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
