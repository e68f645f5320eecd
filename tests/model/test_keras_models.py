"""The Keras models: every backbone builds with its registered dims, the pooled model equals plain
Keras (preprocess_input + include_top=False + pooling) image for image, several outputs in one
model, output naming, and the classifier model of --predictions."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.model import backbones, keras_models  # noqa: E402
from pipeline.model.backbones import BACKBONES, POOLINGS  # noqa: E402
from tests.helpers.backbone_checks import check_backbone_builds_with_its_registered_dim  # noqa: E402
from tests.helpers.keras_helpers import images, keras_preprocess, relative_l2, save_legacy_h5  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Each model is checked against Keras once: these here, straight through keras_models; MobileNetV3Small,
# VGG16, Xception and DenseNet121 (one per preprocessing mode) through the whole pipeline in
# tests/model/test_parity.py.
PARITY_MODELS = ["ResNet50", "InceptionV3", "EfficientNetB0", "ConvNeXtTiny"]
PARITY_SIZE = 80  # >= every parity model's minimum (InceptionV3: 75)


# --------------------------------------------------------------------------- every model


# Building 40 backbones takes minutes of one core (Python builds layer by layer), and the CI machine has
# two: a helper process checks the second half of the list while this one checks the first. Each test
# of that half waits for its backbone's outcome and fails with the helper's traceback.
HELPER_HALF = sorted(BACKBONES)[len(BACKBONES) // 2:]
HELPER_WAIT_S = 600


class BackboneHelper:
    def __init__(self, out_dir: Path, names: list[str]):
        self.out_dir, self.log = out_dir, out_dir / "helper.log"
        code = ("import sys\n"
                "from tests.helpers.backbone_checks import check_backbones_in_helper\n"
                "check_backbones_in_helper(sys.argv[1], sys.argv[2:])\n")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code, str(out_dir), *names], cwd=str(ROOT),
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def outcome(self, name: str) -> str:
        deadline = time.monotonic() + HELPER_WAIT_S
        while not (self.out_dir / name).exists():
            if self.process.poll() is not None and not (self.out_dir / name).exists():
                pytest.fail(f"the helper process exited {self.process.returncode} before checking {name}:\n"
                            f"{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the helper process did not check {name} within {HELPER_WAIT_S} s")
            time.sleep(0.1)
        return (self.out_dir / name).read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def backbone_helper(request, tmp_path_factory):
    """Started by the first test of the list, for the backbones of HELPER_HALF this session selected."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_every_backbone_builds_with_its_registered_dim"
             and item.callspec.params["name"] in HELPER_HALF]
    helper = BackboneHelper(tmp_path_factory.mktemp("backbone-helper"), names) if names else None
    yield helper
    if helper:
        helper.stop()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_with_its_registered_dim(name, backbone_helper, fresh_keras):
    if name in HELPER_HALF:
        outcome = backbone_helper.outcome(name)
        assert not outcome, f"{name}, checked in the helper process:\n{outcome}"
    else:
        check_backbone_builds_with_its_registered_dim(name)


# one backbone per kind of classifier head (the other families are global pooling + Dense, like ResNet50's)
HEADS = ["VGG16",  # Flatten + fc1 + fc2 + Dense
         "MobileNet", "MobileNetV3Small", "MobileNetV3Large",  # 1x1 convolutions after global pooling
         "ConvNeXtTiny",  # global pooling + LayerNormalization + Dense
         "EfficientNetB0",  # global pooling + Dropout + Dense
         "ResNet50"]  # global pooling + Dense


@pytest.mark.parametrize("name", HEADS)
def test_classifier_input_has_the_registered_classifier_dim(name, fresh_keras):
    """The full model's last weighted layer takes `classifier_dim` features (built, not run)."""
    import keras

    backbone = BACKBONES[name]
    side = backbone.default_size if backbone.flatten_head else backbone.min_size
    full = getattr(keras.applications, name)(include_top=True, weights=None, input_shape=(side, side, 3))
    classifier = [layer for layer in full.layers if layer.weights][-1]
    assert int(np.prod(classifier.input.shape[1:])) == backbone.classifier_dim
    assert full.output.shape[-1] == 1000


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

    model = keras_models.build_pooled_model(backbone, (PARITY_SIZE, PARITY_SIZE), str(weights), poolings=["avg"])
    got = model(backbones.preprocess_batch(backbone, x))
    assert list(got) == ["embedding"]
    error = relative_l2(got["embedding"], want)
    assert (error <= 1e-5).all(), f"{name}: relative L2 {error}"


def test_convnext_pools_before_its_head_norm_like_keras(tmp_path, fresh_keras):
    """ConvNeXt's include_top=False model ends in a LayerNormalization that Keras applies after pooling."""
    import keras

    backbone = BACKBONES["ConvNeXtTiny"]
    keras.utils.set_random_seed(4)
    full = keras.applications.ConvNeXtTiny(include_top=True, weights=None)  # a full file: the head norm is named
    weights = tmp_path / "convnext-full.weights.h5"
    full.save_weights(str(weights))
    x = images(2, 32, seed=7)
    model = keras_models.build_pooled_model(backbone, (32, 32), str(weights), poolings=["avg", "max"])
    got = model(backbones.preprocess_batch(backbone, x))
    final = keras_models.default_layer(backbone)
    for pooling in ("avg", "max"):
        reference = keras.applications.ConvNeXtTiny(include_top=False, pooling=pooling, weights=str(weights),
                                                    input_shape=(32, 32, 3))
        want = reference.predict(keras_preprocess(backbone, x), verbose=0)
        error = relative_l2(got[f"{final}/{pooling}"], want)
        assert (error <= 1e-5).all(), f"{pooling}: relative L2 {error}"


# --------------------------------------------------------------------------- several outputs


def test_several_layers_and_poolings_in_one_model(tmp_path, fresh_keras):
    import keras

    backbone = BACKBONES["ResNet50"]
    size = 64
    keras.utils.set_random_seed(5)
    weights = tmp_path / "resnet50.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3)).save_weights(
        str(weights))
    final = keras_models.default_layer(backbone)
    assert final == "conv5_block3_out" == keras_models.list_layers(backbone, (size, size))[-1][0]
    x = backbones.preprocess_batch(backbone, images(3, size, seed=8))

    model = keras_models.build_pooled_model(backbone, (size, size), str(weights),
                                          layers=["conv4_block6_out", final], poolings=list(POOLINGS))
    out = {name: np.asarray(value) for name, value in model(x).items()}
    assert list(out) == [f"{layer}/{p}" for layer in ("conv4_block6_out", final) for p in POOLINGS]
    for pooling in POOLINGS:
        assert out[f"conv4_block6_out/{pooling}"].shape == (3, 1024)
        assert out[f"{final}/{pooling}"].shape == (3, backbone.dim)
        assert out[f"{final}/{pooling}"].dtype == np.float32

    single = keras_models.build_pooled_model(backbone, (size, size), str(weights))
    embedding = np.asarray(single(x)["embedding"])
    assert (relative_l2(out[f"{final}/avg"], embedding) <= 1e-6).all()
    assert not np.allclose(out[f"{final}/max"], embedding)

    # gem: p=1 is the average (ReLU outputs are >= 0), a large p approaches the max
    gem1 = keras_models.build_pooled_model(backbone, (size, size), str(weights), layers=["conv4_block6_out", final],
                                         poolings=["gem"], gem_p=1.0)(x)
    for layer in ("conv4_block6_out", final):
        assert (relative_l2(gem1[f"{layer}/gem"], out[f"{layer}/avg"]) <= 1e-4).all()
    assert (relative_l2(out[f"{final}/gem"], out[f"{final}/avg"]) > 1e-3).all()

    normed = keras_models.build_pooled_model(backbone, (size, size), str(weights), layers=["conv4_block6_out", None],
                                           poolings=list(POOLINGS), l2_normalize=True)(x)
    assert list(normed) == list(out)  # None is the final layer, spelled with its real name
    for name, value in normed.items():
        np.testing.assert_allclose(np.linalg.norm(np.asarray(value), axis=1), 1.0, rtol=1e-5)
        assert (relative_l2(value, out[name] / np.linalg.norm(out[name], axis=1, keepdims=True)) <= 1e-5).all()


def test_unknown_layer_lists_the_valid_layers(fresh_keras):
    with pytest.raises(ValueError) as error:
        keras_models.build_pooled_model("ResNet50", (32, 32), None, layers=["conv4_block6_out", "conv9_nope"])
    message = str(error.value)
    assert "'conv9_nope'" in message and "conv4_block6_out" in message and "conv5_block3_out" in message
    assert "'conv4_block6_out'" not in message.split("valid layers")[0]


def test_bad_requests_are_refused_before_building():
    with pytest.raises(ValueError, match="choose from: avg, max, gem"):
        keras_models.build_pooled_model("ResNet50", (32, 32), None, poolings=["mean"])
    with pytest.raises(ValueError, match="gem_p"):
        keras_models.build_pooled_model("ResNet50", (32, 32), None, poolings=["gem"], gem_p=0)
    with pytest.raises(ValueError, match="minimum of 75x75"):
        keras_models.build_pooled_model("InceptionV3", (74, 120), None)


def test_list_layers_are_spatial_and_reproducible(fresh_keras):
    import keras

    first = keras_models.list_layers("InceptionV3", (75, 75))  # unnamed layers: conv2d, conv2d_1, ...
    keras.applications.MobileNetV2(weights=None)  # advances Keras' auto-naming counters
    assert keras_models.list_layers("InceptionV3", (75, 75)) == first
    assert all(len(shape) == 4 and shape[0] is None for _, shape in first)
    assert first[-1] == ("mixed10", (None, 1, 1, 2048))
    assert "input_layer" not in dict(first)


# --------------------------------------------------------------------------- small helpers


def test_output_name_rule():
    assert keras_models.output_name(None, "avg", 1) == "embedding"
    assert keras_models.output_name(None, "max", 1) == "embedding"
    assert keras_models.output_name(None, "gem", 2, final_layer="top_activation") == "top_activation/gem"
    assert keras_models.output_name("block5_pool", "max", 1) == "embedding"
    assert keras_models.output_name("block5_pool", "max", 3) == "block5_pool/max"
    with pytest.raises(ValueError, match="backbone"):
        keras_models.output_name(None, "avg", 2)
    with pytest.raises(ValueError):
        keras_models.output_name("x", "sum", 1)


def test_modules_import_neither_keras_tensorflow_nor_beam():
    """The launcher imports these eagerly; the workers set KERAS_BACKEND before Keras loads."""
    code = ("import sys\n"
            "import pipeline.model.keras_models, pipeline.model.applications, pipeline.model.layers\n"
            "import pipeline.model.weight_files\n"
            "bad = [m for m in ('keras', 'tensorflow', 'apache_beam', 'jax', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT))


def test_output_name_looks_up_the_final_layer(fresh_keras):
    assert keras_models.output_name(None, "avg", 2, backbone="VGG16") == "block5_pool/avg"
    assert keras_models.default_layer("MobileNetV2") == "out_relu"


# --------------------------------------------------------------------------- the classifier model (--predictions)


def classifier_reference(full, x):
    """(embedding, predictions) of a Keras full model: its last weighted layer's input, flattened, and its output."""
    import keras

    classifier = [layer for layer in full.layers if layer.weights][-1]
    probe = keras.Model(full.input, [classifier.input, full.output])
    embedding, predictions = probe.predict(x, verbose=0)
    return embedding.reshape(len(x), -1), predictions


def test_classifier_model_equals_keras_full_model(tmp_path, fresh_keras):
    """MobileNetV3Small at its size from a Keras 3 full-model file: the softmax and the 1024-d input of
    its logits convolution, from one model, equal Keras's own full model."""
    import keras

    backbone = BACKBONES["MobileNetV3Small"]
    keras.utils.set_random_seed(31)
    weights = tmp_path / "mobilenetv3small-full.weights.h5"
    keras.applications.MobileNetV3Small(include_top=True, weights=None).save_weights(str(weights))
    reference = keras.applications.MobileNetV3Small(include_top=True, weights=str(weights))
    x = keras_preprocess(backbone, images(2, 224, seed=9))
    want_embedding, want_predictions = classifier_reference(reference, x)

    model = keras_models.build_classifier_model(backbone, (224, 224), str(weights))
    got = {name: np.asarray(value) for name, value in model(backbones.preprocess_batch(backbone, images(2, 224, seed=9))).items()}
    assert sorted(got) == ["embedding", "predictions"]
    assert got["embedding"].shape == (2, backbone.classifier_dim) == (2, 1024)
    assert got["predictions"].shape == (2, 1000) and got["predictions"].dtype == np.float32
    np.testing.assert_allclose(got["predictions"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got["predictions"], want_predictions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["embedding"], want_embedding, rtol=1e-5, atol=1e-6)

    normed = keras_models.build_classifier_model(backbone, (224, 224), str(weights), l2_normalize=True)(x)
    unit = want_embedding / np.linalg.norm(want_embedding, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(normed["embedding"]), unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(normed["predictions"]), want_predictions, rtol=1e-5, atol=1e-7)


def test_classifier_model_from_a_legacy_file_at_another_size(tmp_path, fresh_keras):
    """ResNet50's head pools globally, so it runs at 96x96 as Keras's does; the file is a Keras 2 `.h5`."""
    import keras

    backbone = BACKBONES["ResNet50"]
    keras.utils.set_random_seed(32)
    reference = keras.applications.ResNet50(include_top=True, weights=None, input_shape=(96, 96, 3))
    legacy = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    save_legacy_h5(reference, legacy)
    x = keras_preprocess(backbone, images(2, 96, seed=10))
    want_embedding, want_predictions = classifier_reference(reference, x)

    got = keras_models.build_classifier_model(backbone, (96, 96), str(legacy))(x)
    assert np.asarray(got["embedding"]).shape == (2, 2048)
    np.testing.assert_allclose(np.asarray(got["predictions"]), want_predictions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got["embedding"]), want_embedding, rtol=1e-5, atol=1e-6)


def test_classifier_model_refuses_a_file_without_classifier(tmp_path, fresh_keras):
    import keras

    from pipeline.model.weight_files import NoClassifier

    notop = tmp_path / "mobilenetv3small-notop.weights.h5"
    keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(96, 96, 3)).save_weights(str(notop))
    with pytest.raises(NoClassifier) as error:
        keras_models.build_classifier_model("MobileNetV3Small", (96, 96), str(notop))
    assert str(error.value) == (f"--predictions needs the full model's weights; {str(notop)!r} holds no classifier "
                                f"(an include_top=False file)")
