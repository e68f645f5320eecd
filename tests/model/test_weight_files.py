"""Legacy weights files: each layout and kernel ordering Keras ever wrote, written here from a seeded
model, loads into the backbone with exactly the original weights and outputs; a file that does not fit
is refused with one sentence naming the first layer that does not, before a job starts."""
import os

import h5py
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.model import backbones, keras_models, weight_files  # noqa: E402
from pipeline.model.weight_files import NoClassifier, WeightsDoNotFit  # noqa: E402
from tests.helpers.keras_helpers import images  # noqa: E402
from tests.helpers.legacy_weights import SIZE, weighted, write_layer_names, write_nb_layers  # noqa: E402

VGG = backbones.BACKBONES["VGG16"]


# --------------------------------------------------------------------------- writing legacy files


def assert_same_weights(loaded, source) -> None:
    pairs = list(zip(weighted(loaded), weighted(source)))
    assert len(pairs) == len(weighted(source))
    for mine, theirs in pairs:
        for a, b in zip(mine.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=mine.name)


# --------------------------------------------------------------------------- include_top=False files


@pytest.fixture(scope="module")
def vgg_reference(vgg_notop):
    """(preprocessed images, the seeded model's avg-pooled features)."""
    x = backbones.preprocess_batch(VGG, images(2, SIZE, seed=3))
    return x, np.asarray(vgg_notop(x)).mean(axis=(1, 2))


# (file name, writer, theano kernels, channels first, --weights-ordering)
NOTOP_VARIANTS = [
    ("keras1-notop.h5", write_nb_layers, False, False, "auto"),
    ("vgg16_weights_th_dim_ordering_th_kernels_notop.h5", write_nb_layers, True, True, "auto"),
    ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", write_layer_names, False, False, "auto"),
    ("vgg16_weights_th_dim_ordering_tf_kernels_notop.h5", write_layer_names, False, True, "auto"),  # not flipped
    ("vgg16_weights_tf_dim_ordering_th_kernels_notop.h5", write_layer_names, True, False, "auto"),  # only flipped
    ("unnamed-channels-first.h5", write_layer_names, True, True, "auto"),  # shapes say Theano
    ("unnamed-flipped.h5", write_layer_names, True, False, "th"),  # only --weights-ordering says it
    ("mislabelled_th_kernels.h5", write_layer_names, False, False, "tf"),  # the flag wins over the name
    ("keras1-th.h5", write_nb_layers, True, True, "th"),
]


@pytest.mark.parametrize("name, writer, theano_kernels, channels_first, ordering", NOTOP_VARIANTS)
def test_notop_legacy_variants_load_exactly(name, writer, theano_kernels, channels_first, ordering,
                                             vgg_notop, vgg_reference, tmp_path, fresh_keras):
    path = tmp_path / name
    writer(vgg_notop, path, theano_kernels=theano_kernels, channels_first=channels_first)
    model = keras_models.build_pooled_model(VGG, (SIZE, SIZE), str(path), weights_ordering=ordering)
    assert_same_weights(model, vgg_notop)
    x, want = vgg_reference
    np.testing.assert_allclose(np.asarray(model(x)["embedding"]), want, rtol=1e-5, atol=1e-6)


def test_keras2_theano_backend_attribute_means_flipped_kernels(vgg_notop, tmp_path, fresh_keras):
    path = tmp_path / "from-theano.h5"
    write_layer_names(vgg_notop, path, theano_kernels=True, backend="theano")
    model = keras_models.build_pooled_model(VGG, (SIZE, SIZE), str(path))
    assert_same_weights(model, vgg_notop)


def test_kernel_ordering_from_names_and_flags():
    ordering = weight_files.kernel_ordering
    assert ordering("/w/vgg16_weights_th_dim_ordering_th_kernels.h5", "auto") == weight_files.KernelOrdering(True, True)
    assert ordering("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "auto") == weight_files.KernelOrdering(False, False)
    assert ordering("resnet_th_dim_ordering_tf_kernels.h5", "auto") == weight_files.KernelOrdering(False, True)
    assert ordering("model.h5", "auto") == weight_files.KernelOrdering(None, None)
    assert ordering("model.h5", "auto", backend="theano") == weight_files.KernelOrdering(True, None)
    assert ordering("vgg16_weights_tf_dim_ordering_tf_kernels.h5", "th") == weight_files.KernelOrdering(True, True)
    with pytest.raises(ValueError, match="weights_ordering 'theano' is not valid; choose one of: auto, th, tf"):
        ordering("model.h5", "theano")


def test_wrong_explicit_ordering_is_refused_naming_the_layer(vgg_notop, tmp_path, fresh_keras):
    path = tmp_path / "vgg16_weights_th_dim_ordering_th_kernels_notop.h5"
    write_nb_layers(vgg_notop, path, theano_kernels=True, channels_first=True)
    with pytest.raises(WeightsDoNotFit) as error:
        keras_models.build_pooled_model(VGG, (SIZE, SIZE), str(path), weights_ordering="tf")
    assert str(error.value) == (
        f"weights file {str(path)!r} does not fit VGG16: layer 'block1_conv1' (weighted layer 1 of 13) needs "
        f"weights of shapes (3, 3, 3, 64), (64,), but the file's 'layer_0' has (64, 3, 3, 3), (64,)")


def test_files_of_another_model_are_refused_naming_the_first_mismatch(vgg_notop, tmp_path, fresh_keras):
    import keras

    keras.utils.set_random_seed(2)
    mobilenet = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    other = tmp_path / "mobilenet.h5"
    write_layer_names(mobilenet, other)
    with pytest.raises(WeightsDoNotFit, match=r"does not fit VGG16: layer 'block1_conv1' \(weighted layer 1 of 13\) "
                                              r"needs weights of shapes \(3, 3, 3, 64\), \(64,\), but the file's 'conv' "
                                              r"has \(3, 3, 3, 16\)$"):
        keras_models.build_pooled_model(VGG, (SIZE, SIZE), str(other))
    short = tmp_path / "short.h5"  # a notop VGG16 with its last block cut off
    with h5py.File(short, "w") as handle:
        names = [layer.name for layer in weighted(vgg_notop)][:10]
        handle.attrs["layer_names"] = [n.encode() for n in names]
        for layer in weighted(vgg_notop)[:10]:
            group = handle.create_group(layer.name)
            group.attrs["weight_names"] = [b"kernel", b"bias"]
            group.create_dataset("kernel", data=np.asarray(layer.kernel))
            group.create_dataset("bias", data=np.asarray(layer.bias))
    with pytest.raises(WeightsDoNotFit, match="ends after 10 weighted layers, before layer 'block5_conv1' "
                                              r"\(weighted layer 11 of 13\)"):
        keras_models.build_pooled_model(VGG, (SIZE, SIZE), str(short))
    # Keras 0.x BatchNormalization: a standard deviation under an unknown epsilon, refused
    keras0 = tmp_path / "keras0.h5"
    write_nb_layers(mobilenet, keras0)
    with pytest.raises(WeightsDoNotFit, match="layer 'conv_bn' is a BatchNormalization and the file's 'layer_2' is "
                                              "Keras 0.x's"):
        keras_models.build_pooled_model("MobileNetV3Small", (SIZE, SIZE), str(keras0))


# --------------------------------------------------------------------------- full models


@pytest.fixture(scope="module")
def vgg_full():
    """VGG16 with its classifier at 64x64 (a 2x2 map flattened into fc1) and 10 classes: small, and
    the Flatten's (C, H, W) row order of a channels-first file really matters."""
    import keras

    keras.utils.set_random_seed(22)
    return keras.applications.VGG16(include_top=True, weights=None, input_shape=(64, 64, 3), classes=10)


@pytest.mark.parametrize("writer, theano_kernels, channels_first, name", [
    (write_nb_layers, True, True, "vgg16_weights_th_dim_ordering_th_kernels.h5"),
    (write_layer_names, False, True, "vgg16_weights_th_dim_ordering_tf_kernels.h5"),
])
def test_full_legacy_files_load_with_their_classifier(writer, theano_kernels, channels_first, name, vgg_full,
                                                      tmp_path, fresh_keras):
    import keras

    path = tmp_path / name
    writer(vgg_full, path, theano_kernels=theano_kernels, channels_first=channels_first)
    target = keras.applications.VGG16(include_top=True, weights=None, input_shape=(64, 64, 3), classes=10)
    weight_files.load_legacy(target, str(path), whole=True)
    assert_same_weights(target, vgg_full)
    x = backbones.preprocess_batch(VGG, images(2, 64, seed=4))
    np.testing.assert_array_equal(target.predict(x, verbose=0), vgg_full.predict(x, verbose=0))
    # the body of the same file, head ignored, at another size
    body = keras_models.build_pooled_model(VGG, (SIZE, SIZE), str(path))
    assert_same_weights(body, keras.Model(vgg_full.input, vgg_full.get_layer("block5_pool").output))


def test_a_notop_file_has_no_classifier(vgg_notop, tmp_path, fresh_keras):
    import keras

    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_layer_names(vgg_notop, path)
    target = keras.applications.VGG16(include_top=True, weights=None, input_shape=(64, 64, 3), classes=10)
    with pytest.raises(NoClassifier) as error:
        weight_files.load_legacy(target, str(path), whole=True)
    assert str(error.value) == (f"--predictions needs the full model's weights; {str(path)!r} ends before layer "
                                f"'fc1', so it holds no classifier (an include_top=False file)")
