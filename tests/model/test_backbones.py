"""The backbone registry: every keras.applications model has a row, each row's preprocessing is its
module's preprocess_input, and the module loads without Keras."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.model import backbones  # noqa: E402
from pipeline.model.backbones import BACKBONES  # noqa: E402
from tests.helpers.keras_helpers import images, keras_preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the table


def test_registry_covers_exactly_keras_applications():
    import keras

    names = {name for name in dir(keras.applications) if name[:1].isupper()}
    assert set(BACKBONES) == names
    assert len(BACKBONES) == 40
    for name, row in BACKBONES.items():
        assert row.name == name
        assert callable(getattr(getattr(keras.applications, row.module), "preprocess_input"))
        assert row.preprocess in backbones.PREPROCESS_MODES
        assert 32 <= row.min_size <= row.default_size
        assert row.dim > 0
    assert {n for n, row in BACKBONES.items() if row.imagenet_size} == {"NASNetMobile", "NASNetLarge"}
    assert BACKBONES["NASNetMobile"].imagenet_size == 224 and BACKBONES["NASNetLarge"].imagenet_size == 331


def _classify_preprocess(fn, x: np.ndarray) -> str:
    out = np.asarray(fn(x.copy()), np.float64)
    if np.allclose(out, x, atol=1e-4):
        return "builtin"
    if np.allclose(out, x / 127.5 - 1.0, atol=1e-4):
        return "tf"
    if np.allclose(out, x[..., ::-1] - [103.939, 116.779, 123.68], atol=1e-3):
        return "caffe"
    if np.allclose(out, (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-4):
        return "torch"
    return "unknown"


def test_preprocess_column_matches_each_modules_preprocess_input():
    import keras

    x = images(1, 8, seed=1)
    for name, row in BACKBONES.items():
        fn = getattr(keras.applications, row.module).preprocess_input
        assert _classify_preprocess(fn, x) == row.preprocess, name


@pytest.mark.parametrize("name, mode", [("ResNet50", "caffe"), ("MobileNetV2", "tf"),
                                        ("DenseNet121", "torch"), ("EfficientNetB0", "builtin")])
def test_preprocess_batch_is_the_modules_preprocess_input(name, mode):
    import tensorflow as tf

    backbone = BACKBONES[name]
    assert backbone.preprocess == mode
    x = images(2, 16, seed=2)
    before = x.copy()
    want = keras_preprocess(backbone, x)
    got = backbones.preprocess_batch(backbone, x)
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(x, before)  # the caller's array is left alone
    assert _classify_preprocess(lambda a: backbones.preprocess_batch(name, a), x) == mode
    traced = tf.function(lambda t: backbones.preprocess_batch(backbone, t))(tf.constant(x))
    np.testing.assert_allclose(traced.numpy(), want, rtol=1e-6, atol=1e-5)


def test_get_backbone():
    assert backbones.get_backbone("ResNet50") is BACKBONES["ResNet50"]
    assert backbones.get_backbone("resnet50") is BACKBONES["ResNet50"]
    with pytest.raises(KeyError) as error:
        backbones.get_backbone("ResNet5")
    assert "ResNet5'" in str(error.value) and "ResNet50" in str(error.value) and "Xception" in str(error.value)


def test_model_summary_rows():
    rows = backbones.model_summary_rows()
    assert [row["name"] for row in rows] == list(BACKBONES)
    row = next(row for row in rows if row["name"] == "Xception")
    assert row["default_size"] == 299 and row["min_size"] == 71 and row["preprocess"] == "tf"
    assert row["dim_avg"] == row["dim_max"] == row["dim_gem"] == 2048 and row["imagenet_size"] == "any"
    assert next(row for row in rows if row["name"] == "NASNetLarge")["imagenet_size"] == 331
    dims = {row["name"]: row["dim_predictions"] for row in rows}
    assert dims["VGG16"] == 4096 and dims["MobileNetV3Small"] == 1024 and dims["ResNet50"] == 2048
    assert {name for name, row in BACKBONES.items() if row.flatten_head} == {"VGG16", "VGG19"}


def test_module_imports_neither_keras_tensorflow_nor_beam():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('bb', {str(ROOT / 'pipeline' / 'model' / 'backbones.py')!r})\n"
            "module = sys.modules['bb'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "assert len(module.BACKBONES) == 40\n"
            "bad = [m for m in ('keras', 'tensorflow', 'apache_beam', 'jax', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT))
