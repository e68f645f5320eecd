"""pipeline.model.applications: keras.applications bodies at any size, and weights files (Keras 3 or legacy,
notop or full, another head) loaded into them equal to Keras's own loading."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.model import applications, backbones, keras_models  # noqa: E402
from pipeline.model.backbones import BACKBONES  # noqa: E402
from tests.helpers.keras_helpers import images, keras_preprocess, relative_l2, save_legacy_h5  # noqa: E402

PARITY_SIZE = 80


def test_a_body_is_built_at_the_size_asked_and_lists_its_spatial_layers_in_order(fresh_keras):
    backbone = BACKBONES["MobileNetV3Small"]
    model = applications.body(backbone, (48, 64))
    assert tuple(model.input.shape) == (None, 48, 64, 3)
    layers = applications.spatial_layers(model)
    assert list(layers)[-1] == model.layers[-1].name and all(len(shape) == 4 for shape in layers.values())
    assert list(layers) == [layer.name for layer in model.layers if layer.name in layers]  # model order
    with pytest.raises(ValueError, match="below MobileNetV3Small's minimum of 32x32"):
        applications.body(backbone, (16, 64))


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
        model = keras_models.build_pooled_model(backbone, (PARITY_SIZE, PARITY_SIZE), str(path))
        error = relative_l2(model(backbones.preprocess_batch(backbone, x))["embedding"], want)
        assert (error <= 1e-5).all(), f"{path.name}: relative L2 {error}"

    custom_body = keras.Model(custom.input, custom.get_layer("avg_pool").output)
    want = custom_body.predict(batch, verbose=0)
    model = keras_models.build_pooled_model(backbone, (PARITY_SIZE, PARITY_SIZE), str(custom_legacy))
    error = relative_l2(model(backbones.preprocess_batch(backbone, x))["embedding"], want)
    assert (error <= 1e-5).all(), f"10-class head: relative L2 {error}"



def test_weights_that_fit_nothing_raise_a_clear_error(tmp_path, fresh_keras):
    import keras

    other = tmp_path / "vgg16-notop.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(str(other))
    legacy = tmp_path / "vgg16-notop.h5"
    save_legacy_h5(keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)), legacy)
    for path in (other, legacy):
        with pytest.raises(ValueError, match="does not fit MobileNetV2"):
            keras_models.build_pooled_model("MobileNetV2", (32, 32), str(path))
    with pytest.raises(ValueError, match="does not exist"):
        keras_models.build_pooled_model("MobileNetV2", (32, 32), str(tmp_path / "missing.weights.h5"))
