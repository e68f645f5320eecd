"""Parity with Keras: squash + nearest through the whole pipeline equals load_img + preprocess_input + predict."""
import glob
import importlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.model import backbones
from pipeline.job.launch import run

SIZE = 75  # >= every model's minimum below (Xception: 71)
# One model per preprocessing mode (builtin, caffe, tf, torch): what the pipeline adds to the model
# (decoding, resizing, preprocessing inside its compiled function) depends on nothing else. Each other
# architecture is checked once against Keras straight through keras_models, in
# tests/model/test_keras_models.py::test_final_avg_equals_keras_reference.
MODELS = ["MobileNetV3Small", "VGG16", "Xception", "DenseNet121"]


@pytest.fixture(scope="module")
def plain_images(tmp_path_factory):
    """RGB and grayscale, JPEG and PNG, odd sizes so the resize really happens."""
    root = tmp_path_factory.mktemp("plain")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)).save(root / "rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (120, 80, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (50, 90), dtype=np.uint8)).save(root / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (75, 75), dtype=np.uint8)).save(root / "gray.png")
    return root


@pytest.mark.parametrize("name", MODELS)
def test_features_equal_keras_reference(name, plain_images, tmp_path):
    import keras

    backbone = backbones.BACKBONES[name]
    keras.utils.set_random_seed(11)
    reference = getattr(keras.applications, name)(
        include_top=False, weights=None, pooling="avg", input_shape=(SIZE, SIZE, 3))
    weights = str(tmp_path / f"{name}.weights.h5")
    reference.save_weights(weights)

    run(["--input", str(plain_images), "--output", str(tmp_path / "out"), "--model", name,
         "--weights", weights, "--image-size", str(SIZE), "--resize", "squash", "--interpolation", "nearest",
         "--direct_running_mode=in_memory"])
    table = pq.read_table(glob.glob(f"{tmp_path}/out/features/*.parquet"))
    got = dict(zip(table.column("key").to_pylist(), np.array(table.column("embedding").to_pylist())))
    assert sorted(got) == ["gray.jpg", "gray.png", "rgb.jpg", "rgb.png"]

    preprocess_input = importlib.import_module(f"keras.applications.{backbone.module}").preprocess_input
    keys = sorted(got)
    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(plain_images / k, target_size=(SIZE, SIZE)))
                      for k in keys])
    expected = reference.predict(preprocess_input(batch), verbose=0)
    for key, want in zip(keys, expected):
        error = np.linalg.norm(got[key] - want) / np.linalg.norm(want)
        assert error <= 1e-5, f"{name} {key}: relative L2 error {error:.2e}"
