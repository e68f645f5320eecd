"""Keras backends end to end: `--keras-backend jax` gives TensorFlow's vectors (relative L2 <= 1e-4).

JAX runs in worker processes of their own (a process runs one Keras backend; this test process
runs TensorFlow), so the JAX runs use the multi-processing local runner.
"""
import glob
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.job.launch import run

JAX_WORKER = ["--keras-backend", "jax", "--direct_running_mode=multi_processing", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for i, size in enumerate([(61, 97), (120, 80), (40, 40), (70, 55), (33, 90), (50, 64)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def vectors(out):
    table = pq.read_table(glob.glob(f"{out}/features/*.parquet")).sort_by("key")
    return table.column("key").to_pylist(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


# MobileNetV3Small at 48 on JAX against TensorFlow (same tolerance, same fingerprint checks) runs on the
# portable runner: tests/job/test_portable.py::test_the_jax_backend_runs_on_the_cluster.
@pytest.mark.parametrize("model, size", [("ResNet50", 32)])
def test_jax_vectors_equal_tensorflow_vectors(model, size, photos, tmp_path):
    import keras

    keras.utils.set_random_seed(3)  # a weights file: random initialisers differ between backends
    weights = str(tmp_path / "w.weights.h5")
    getattr(keras.applications, model)(include_top=False, weights=None, input_shape=(size, size, 3)).save_weights(weights)
    args = ["--input", str(photos), "--model", model, "--weights", weights, "--image-size", str(size),
            "--batch-size", "4", "--no-progress"]
    with_tf = run([*args, "--output", str(tmp_path / "tf"), "--direct_running_mode=in_memory"])
    with_jax = run([*args, "--output", str(tmp_path / "jax"), *JAX_WORKER])
    keys, tf_vectors = vectors(tmp_path / "tf")
    jax_keys, jax_vectors = vectors(tmp_path / "jax")
    assert keys == jax_keys == [f"p{i}.png" for i in range(6)]
    error = np.linalg.norm(jax_vectors - tf_vectors, axis=1) / np.linalg.norm(tf_vectors, axis=1)
    assert error.max() <= 1e-4, error
    assert with_jax["fingerprint"]["keras_backend"] == "jax" and with_tf["fingerprint"]["keras_backend"] == "tensorflow"
    stored = json.loads(pq.ParquetFile(glob.glob(f"{tmp_path}/jax/features/*.parquet")[0])
                        .schema_arrow.metadata[b"featurize.fingerprint"])
    assert stored["keras_backend"] == "jax"
