"""Small real runs the end-to-end tests share: the test backbone, the local running modes, the argument
lists, and the check that Beam's metrics tell the manifest's story."""
from __future__ import annotations

from pipeline.job.launch import run
from tests.helpers.samples import BOMB_MAX_PIXELS

# Small enough for a 2-core CI machine, big enough to exercise every stage.
TEST_MODEL = "MobileNetV3Small"
TEST_SIZE = 48
N_SHARDS, PER_SHARD = 6, 10  # the `numbered` dataset

MODES = {
    "in_process": ["--direct_running_mode=in_memory"],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
LOCAL = MODES["multi_processing"]
IN_MEMORY = MODES["in_process"]


def run_small(input_path, out, weights, *extra):
    return run(["--input", str(input_path), "--output", str(out), "--model", TEST_MODEL,
                "--weights", weights, "--image-size", str(TEST_SIZE), "--batch-size", "8",
                "--max-pixels", str(BOMB_MAX_PIXELS), *extra])


def featurize(source, out, weights, *extra):
    """A small run on the in-process runner (run_small's settings)."""
    return run_small(source, out, weights, *MODES["in_process"], *extra)


def featurize_args(source, out, weights, fmt="parquet", *extra):
    return ["--input", str(source), "--output", str(out), "--model", TEST_MODEL, "--weights", weights,
            "--image-size", str(TEST_SIZE), "--batch-size", "4", "--format", fmt, "--no-progress", *extra]


def check_metrics_match_counts(manifest):
    """The runner's Beam metrics tell the same story as the files the manifest counted."""
    counters, counts = manifest["metrics"]["counters"], manifest["counts"]
    by_stage = counts["errors_by_stage"]
    assert counters["inputs"] == counts["inputs"]
    assert counters["rows"] == counts["rows"]
    assert counters.get("decoded", 0) == counts["rows"] + by_stage["infer"]
    assert counters.get("decode_errors", 0) == by_stage["decode"]
    assert counters.get("read_errors", 0) == by_stage["read"]
    assert counters.get("infer_errors", 0) == by_stage["infer"]
    batch_sizes = manifest["metrics"]["distributions"]["batch_size"]
    assert batch_sizes["count"] == counters["batches"] and batch_sizes["sum"] == counts["rows"]
    assert manifest["metrics"]["distributions"]["inference_ms_per_image"]["count"] == counters["batches"]
    stages = manifest["metrics"]["stages"]
    assert stages["decode"]["images"] == counters["decoded"] and stages["infer"]["images"] == counts["rows"]
    assert stages["infer"]["seconds"] > 0 and stages["infer"]["images_per_s"] > 0
