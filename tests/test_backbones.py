"""The backbone registry: every keras.applications model builds with its registered dims, and the
feature model equals plain Keras (preprocess_input + include_top=False + pooling) image for image."""
import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline import backbones  # noqa: E402
from pipeline.backbones import BACKBONES, POOLINGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARITY_MODELS = ["MobileNetV3Small", "ResNet50", "VGG16", "InceptionV3", "Xception", "EfficientNetB0",
                 "DenseNet121", "ConvNeXtTiny"]
PARITY_SIZE = 80  # >= every parity model's minimum (InceptionV3: 75, Xception: 71)


def relative_l2(got, want) -> np.ndarray:
    """||a - b|| / ||b|| per row: random-weight features can be tiny, so never an absolute tolerance."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


def images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def keras_preprocess(backbone, x: np.ndarray) -> np.ndarray:
    import keras

    return getattr(keras.applications, backbone.module).preprocess_input(x.copy())  # it edits in place


def save_legacy_h5(model, path: Path) -> None:
    """A weights-only legacy HDF5 file, laid out like the ImageNet files Keras downloads."""
    try:
        import h5py
        from keras.src.legacy.saving import legacy_h5_format
    except ImportError:  # pragma: no cover - fall back to the public (full-model) HDF5 save
        model.save(str(path))
        return
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.fixture
def fresh_keras():
    """Free each big model after its test: all 40 kept alive would need many GiB."""
    yield
    import keras

    keras.backend.clear_session()
    gc.collect()


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


# --------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_with_its_registered_dim(name, fresh_keras):
    """Smallest legal input, weights=None: avg and max give `dim`; one size smaller is refused."""
    import keras

    backbone = BACKBONES[name]
    side = backbone.min_size
    with pytest.raises(ValueError):  # min_size really is Keras' minimum (refused before building)
        getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(side - 1, side - 1, 3))
    model = backbones.build_feature_model(backbone, (side, side), None, poolings=["avg", "max"])
    final = backbones.default_layer(backbone)
    out = model(backbones.preprocess_batch(backbone, images(1, side)))
    assert sorted(out) == sorted([f"{final}/avg", f"{final}/max"])
    for value in out.values():
        value = np.asarray(value)
        assert value.shape == (1, backbone.dim) and value.dtype == np.float32
        assert np.isfinite(value).all()


# --------------------------------------------------------------------------- parity with Keras


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_final_avg_equals_keras_reference(name, tmp_path, fresh_keras):
    import keras

    backbone = BACKBONES[name]
    shape = (PARITY_SIZE, PARITY_SIZE, 3)
    keras.utils.set_random_seed(11)
    source = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=shape)
    weights = tmp_path / f"{name}-notop.weights.h5"
    source.save_weights(str(weights))
    reference = getattr(keras.applications, name)(include_top=False, pooling="avg", weights=str(weights),
                                                  input_shape=shape)
    x = images(2, PARITY_SIZE, seed=5)
    want = reference.predict(keras_preprocess(backbone, x), verbose=0)

    model = backbones.build_feature_model(backbone, (PARITY_SIZE, PARITY_SIZE), str(weights), poolings=["avg"])
    got = model(backbones.preprocess_batch(backbone, x))
    assert list(got) == ["embedding"]
    error = relative_l2(got["embedding"], want)
    assert (error <= 1e-5).all(), f"{name}: relative L2 {error}"


def test_full_model_weights_files_load_into_the_notop_model(tmp_path, fresh_keras):
    """A full include_top=True file (Keras 3 `.weights.h5`, legacy `.h5`, legacy `.h5` with a
    10-class head) loads at a size other than the full model's, equal to Keras' own features."""
    import keras

    backbone = BACKBONES["ResNet50"]
    keras.utils.set_random_seed(3)
    shape = (PARITY_SIZE, PARITY_SIZE, 3)  # ResNet's head is GAP + Dense: a full model runs at any size
    full = keras.applications.ResNet50(include_top=True, weights=None, input_shape=shape)
    full_weights = tmp_path / "resnet50-full.weights.h5"
    full.save_weights(str(full_weights))
    legacy = tmp_path / "resnet50-full.h5"
    save_legacy_h5(full, legacy)
    custom = keras.applications.ResNet50(include_top=True, weights=None, classes=10, input_shape=shape)
    custom_legacy = tmp_path / "resnet50-10-classes.h5"
    save_legacy_h5(custom, custom_legacy)

    x = images(2, PARITY_SIZE, seed=6)
    batch = keras_preprocess(backbone, x)
    reference = keras.applications.ResNet50(include_top=False, pooling="avg", weights=str(full_weights),
                                            input_shape=shape)
    want = reference.predict(batch, verbose=0)
    # the same numbers from the full model itself, run at this size up to its avg_pool layer
    body = keras.Model(full.input, full.get_layer("avg_pool").output)
    np.testing.assert_array_less(relative_l2(body.predict(batch, verbose=0), want), 1e-5)
    for path in (full_weights, legacy):
        model = backbones.build_feature_model(backbone, (PARITY_SIZE, PARITY_SIZE), str(path))
        error = relative_l2(model(backbones.preprocess_batch(backbone, x))["embedding"], want)
        assert (error <= 1e-5).all(), f"{path.name}: relative L2 {error}"

    custom_body = keras.Model(custom.input, custom.get_layer("avg_pool").output)
    want = custom_body.predict(batch, verbose=0)
    model = backbones.build_feature_model(backbone, (PARITY_SIZE, PARITY_SIZE), str(custom_legacy))
    error = relative_l2(model(backbones.preprocess_batch(backbone, x))["embedding"], want)
    assert (error <= 1e-5).all(), f"10-class head: relative L2 {error}"


def test_convnext_pools_before_its_head_norm_like_keras(tmp_path, fresh_keras):
    """ConvNeXt's include_top=False model ends in a LayerNormalization that Keras applies after pooling."""
    import keras

    backbone = BACKBONES["ConvNeXtTiny"]
    keras.utils.set_random_seed(4)
    full = keras.applications.ConvNeXtTiny(include_top=True, weights=None)  # a full file: the head norm is named
    weights = tmp_path / "convnext-full.weights.h5"
    full.save_weights(str(weights))
    x = images(2, 32, seed=7)
    model = backbones.build_feature_model(backbone, (32, 32), str(weights), poolings=["avg", "max"])
    got = model(backbones.preprocess_batch(backbone, x))
    final = backbones.default_layer(backbone)
    for pooling in ("avg", "max"):
        reference = keras.applications.ConvNeXtTiny(include_top=False, pooling=pooling, weights=str(weights),
                                                    input_shape=(32, 32, 3))
        want = reference.predict(keras_preprocess(backbone, x), verbose=0)
        error = relative_l2(got[f"{final}/{pooling}"], want)
        assert (error <= 1e-5).all(), f"{pooling}: relative L2 {error}"


def test_weights_that_fit_nothing_raise_a_clear_error(tmp_path, fresh_keras):
    import keras

    other = tmp_path / "vgg16-notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(str(other))
    legacy = tmp_path / "vgg16-notop.h5"
    save_legacy_h5(keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)), legacy)
    for path in (other, legacy):
        with pytest.raises(ValueError, match="does not fit MobileNetV2"):
            backbones.build_feature_model("MobileNetV2", (32, 32), str(path))
    with pytest.raises(ValueError, match="does not exist"):
        backbones.build_feature_model("MobileNetV2", (32, 32), str(tmp_path / "missing.weights.h5"))


# --------------------------------------------------------------------------- several outputs


def test_several_layers_and_poolings_in_one_model(tmp_path, fresh_keras):
    import keras

    backbone = BACKBONES["ResNet50"]
    size = 64
    keras.utils.set_random_seed(5)
    weights = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3)).save_weights(
        str(weights))
    final = backbones.default_layer(backbone)
    assert final == "conv5_block3_out" == backbones.list_layers(backbone, (size, size))[-1][0]
    x = backbones.preprocess_batch(backbone, images(3, size, seed=8))

    model = backbones.build_feature_model(backbone, (size, size), str(weights),
                                          layers=["conv4_block6_out", final], poolings=list(POOLINGS))
    out = {name: np.asarray(value) for name, value in model(x).items()}
    assert list(out) == [f"{layer}/{p}" for layer in ("conv4_block6_out", final) for p in POOLINGS]
    for pooling in POOLINGS:
        assert out[f"conv4_block6_out/{pooling}"].shape == (3, 1024)
        assert out[f"{final}/{pooling}"].shape == (3, backbone.dim)
        assert out[f"{final}/{pooling}"].dtype == np.float32

    single = backbones.build_feature_model(backbone, (size, size), str(weights))
    embedding = np.asarray(single(x)["embedding"])
    assert (relative_l2(out[f"{final}/avg"], embedding) <= 1e-6).all()
    assert not np.allclose(out[f"{final}/max"], embedding)

    # gem: p=1 is the average (ReLU outputs are >= 0), a large p approaches the max
    gem1 = backbones.build_feature_model(backbone, (size, size), str(weights), layers=["conv4_block6_out", final],
                                         poolings=["gem"], gem_p=1.0)(x)
    for layer in ("conv4_block6_out", final):
        assert (relative_l2(gem1[f"{layer}/gem"], out[f"{layer}/avg"]) <= 1e-4).all()
    assert (relative_l2(out[f"{final}/gem"], out[f"{final}/avg"]) > 1e-3).all()

    normed = backbones.build_feature_model(backbone, (size, size), str(weights), layers=["conv4_block6_out", None],
                                           poolings=list(POOLINGS), l2_normalize=True)(x)
    assert list(normed) == list(out)  # None is the final layer, spelled with its real name
    for name, value in normed.items():
        np.testing.assert_allclose(np.linalg.norm(np.asarray(value), axis=1), 1.0, rtol=1e-5)
        assert (relative_l2(value, out[name] / np.linalg.norm(out[name], axis=1, keepdims=True)) <= 1e-5).all()


def test_unknown_layer_lists_the_valid_layers(fresh_keras):
    with pytest.raises(ValueError) as error:
        backbones.build_feature_model("ResNet50", (32, 32), None, layers=["conv4_block6_out", "conv9_nope"])
    message = str(error.value)
    assert "'conv9_nope'" in message and "conv4_block6_out" in message and "conv5_block3_out" in message
    assert "'conv4_block6_out'" not in message.split("valid layers")[0]


def test_bad_requests_are_refused_before_building():
    with pytest.raises(ValueError, match="choose from: avg, max, gem"):
        backbones.build_feature_model("ResNet50", (32, 32), None, poolings=["mean"])
    with pytest.raises(ValueError, match="gem_p"):
        backbones.build_feature_model("ResNet50", (32, 32), None, poolings=["gem"], gem_p=0)
    with pytest.raises(ValueError, match="minimum of 75x75"):
        backbones.build_feature_model("InceptionV3", (74, 120), None)


def test_get_backbone():
    assert backbones.get_backbone("ResNet50") is BACKBONES["ResNet50"]
    assert backbones.get_backbone("resnet50") is BACKBONES["ResNet50"]
    with pytest.raises(KeyError) as error:
        backbones.get_backbone("ResNet5")
    assert "ResNet5'" in str(error.value) and "ResNet50" in str(error.value) and "Xception" in str(error.value)


def test_list_layers_are_spatial_and_reproducible(fresh_keras):
    import keras

    first = backbones.list_layers("InceptionV3", (75, 75))  # unnamed layers: conv2d, conv2d_1, ...
    keras.applications.MobileNetV2(weights=None)  # advances Keras' auto-naming counters
    assert backbones.list_layers("InceptionV3", (75, 75)) == first
    assert all(len(shape) == 4 and shape[0] is None for _, shape in first)
    assert first[-1] == ("mixed10", (None, 1, 1, 2048))
    assert "input_layer" not in dict(first)


# --------------------------------------------------------------------------- small helpers


def test_output_name_rule():
    assert backbones.output_name(None, "avg", 1) == "embedding"
    assert backbones.output_name(None, "max", 1) == "embedding"
    assert backbones.output_name(None, "gem", 2, final_layer="top_activation") == "top_activation/gem"
    assert backbones.output_name("block5_pool", "max", 1) == "embedding"
    assert backbones.output_name("block5_pool", "max", 3) == "block5_pool/max"
    with pytest.raises(ValueError, match="backbone"):
        backbones.output_name(None, "avg", 2)
    with pytest.raises(ValueError):
        backbones.output_name("x", "sum", 1)


def test_output_name_looks_up_the_final_layer(fresh_keras):
    assert backbones.output_name(None, "avg", 2, backbone="VGG16") == "block5_pool/avg"
    assert backbones.default_layer("MobileNetV2") == "out_relu"


def test_weights_argument():
    assert backbones.weights_argument("imagenet") == "imagenet"
    for none in ("none", "None", "", None):
        assert backbones.weights_argument(none) is None
    assert backbones.weights_argument("/m/resnet.weights.h5") == "/m/resnet.weights.h5"
    assert backbones.weights_argument("/m/resnet50_notop.h5") == "/m/resnet50_notop.h5"


def test_model_summary_rows():
    rows = backbones.model_summary_rows()
    assert [row["name"] for row in rows] == list(BACKBONES)
    row = next(row for row in rows if row["name"] == "Xception")
    assert row["default_size"] == 299 and row["min_size"] == 71 and row["preprocess"] == "tf"
    assert row["dim_avg"] == row["dim_max"] == row["dim_gem"] == 2048 and row["imagenet_size"] == "any"
    assert next(row for row in rows if row["name"] == "NASNetLarge")["imagenet_size"] == 331


def test_module_imports_neither_keras_tensorflow_nor_beam():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('bb', {str(ROOT / 'pipeline' / 'backbones.py')!r})\n"
            "module = sys.modules['bb'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "assert len(module.BACKBONES) == 40\n"
            "bad = [m for m in ('keras', 'tensorflow', 'apache_beam', 'jax', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT))
