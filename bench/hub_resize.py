"""How close featurize's resize comes to keras-hub's image converter on photos of other sizes.

    python bench/hub_resize.py [--images 40]

On images at the preset's input size featurize's vectors equal keras-hub's (tests/model/test_hub.py).
On a photo of another size the two resize differently: keras-hub's converter resizes the float image with
`keras.layers.Resizing` (crop to the aspect ratio, then its interpolation, no antialiasing by default),
featurize with Pillow before the model (the same crop, the converter's interpolation, Pillow's filters
antialias when they shrink; JPEGs decoded at a reduced scale first unless --no-jpeg-draft). This prints,
for the DINOv2-S/14 and CLIP ViT-B/32 architectures at 224 (random weights), over photo-like JPEGs of
320x240 to 1600x1200: the mean absolute pixel difference (0..255) between the two resized images, and the
relative L2 distance and cosine similarity between the two image embeddings, with and without JPEG draft.
Random weights: the vector distances show how much the pixels move a transformer of that shape, not
what a trained model's neighbours would do.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_speed import MODELS  # noqa: E402 - bench/ is not a package
from throughput import make_jpegs  # noqa: E402
from machine import reported  # noqa: E402 - bench/ is not a package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_hub
    from PIL import Image

    from pipeline.images import DecodeSpec, decode_image
    from pipeline.model import hub

    work = Path(tempfile.mkdtemp(prefix="featurize-hub-resize-"))
    try:
        paths = make_jpegs(work / "photos", args.images)
        print("| model | JPEG draft | mean abs pixel difference | relative L2 (mean / max) | cosine (min) |")
        print("| --- | --- | --- | --- | --- |")
        for name, build in MODELS.items():
            keras.utils.set_random_seed(0)
            backbone, converter = build(keras_hub)
            folder = str(work / name)
            backbone.save_to_preset(folder)
            converter.save_to_preset(folder)
            info = hub.describe_preset(folder, folder)
            model = hub.build_hub_model(folder, info.image_size, None, ("model",))
            converter = keras_hub.layers.ImageConverter.from_preset(folder)
            embed = getattr(backbone, "get_vision_embeddings", None) or (lambda x: backbone(x)[:, 0, :])
            for draft in (True, False):
                spec = DecodeSpec(*info.image_size, info.resize, info.interpolation, None, draft, True)
                pixel_diffs, distances, cosines = [], [], []
                for path in paths:
                    data = path.read_bytes()
                    ours_pixels = decode_image(data, spec)[0]
                    full = np.asarray(Image.open(path).convert("RGB"))[None]
                    theirs = np.asarray(converter(full))
                    scale, offset = np.asarray(info.scale, np.float32), np.asarray(info.offset, np.float32)
                    pixel_diffs.append(np.abs((theirs[0] - offset) / scale - ours_pixels).mean())
                    ours = np.asarray(model(ours_pixels[None].astype(np.float32))["embedding"])[0]
                    reference = np.asarray(embed(theirs))[0]
                    distances.append(np.linalg.norm(ours - reference) / np.linalg.norm(reference))
                    cosines.append(ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference)))
                print(f"| {name} ({info.resize}, {info.interpolation}) | {'on' if draft else 'off'} "
                      f"| {np.mean(pixel_diffs):.2f} | {np.mean(distances):.4f} / {np.max(distances):.4f} "
                      f"| {np.min(cosines):.4f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with reported():
        main()
