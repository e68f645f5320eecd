"""Tiny keras-hub presets for the tests: `samples/make_tiny_preset.py` (keras-hub's own constructors and
`save_to_preset`, read back through the real `from_preset`), and the store copy a run's workers read."""
from __future__ import annotations

import importlib.util
import os
import pathlib

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "samples" / "make_tiny_preset.py"
_spec = importlib.util.spec_from_file_location("make_tiny_preset", _SCRIPT)
make_tiny_preset = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_tiny_preset)

BUILDERS = make_tiny_preset.BUILDERS
SENTENCES = make_tiny_preset.SENTENCES
save_tiny_preset = make_tiny_preset.save_tiny_preset


def published(preset_folder: str, store: str) -> tuple[str, str]:
    """The preset copied into a store as a run copies it: (its location, its digest)."""
    from pipeline.model import hub

    preset_files = hub.PresetFiles.of_folder(preset_folder)
    target = os.path.join(store, "_featurize", "presets", preset_files.digest[:16])
    hub.publish_preset(preset_folder, preset_files, target)
    return target, preset_files.digest


def hub_spec(preset_folder: str, store: str, size: tuple[int, int], layers=None, poolings=("model",), l2=False):
    """The ModelSpec a run's workers get for this preset, its copy published into `store`."""
    from pipeline.model.spec import ModelSpec

    location, digest = published(preset_folder, store)
    return ModelSpec(f"hub:{preset_folder}", size, location, tuple(layers) if layers else None, tuple(poolings),
                     l2_normalize=l2, weights_sha256=digest)


def write_photos(folder: str, size: tuple[int, int], count: int = 10) -> str:
    """Random PNGs at a preset's input size in two subfolders (featurize then resizes nothing)."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(3)
    for i in range(count):
        sub = os.path.join(folder, "ab"[i % 2])
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(sub, f"{i:02d}.png"))
    return folder


def hub_run(source, out, preset: str, *extra) -> dict:
    """`featurize run --model hub:PRESET` (batch 4, no progress line); returns the manifest."""
    from pipeline.job.launch import run

    return run(["--input", str(source), "--output", str(out), "--model", f"hub:{preset}", "--batch-size", "4",
                "--no-progress", *extra])
