"""The model outside Beam (pipeline.model.runtime): loading for a backend, random weights the same on
every worker, padding to the compiled batch shape, XLA and mixed precision, the classifier's outputs,
TensorFlow loaded without jax, a model that cannot be built said in one sentence."""
import functools

import numpy as np
import pytest

from pipeline.model.backbones import preprocess_batch
from pipeline.model.failures import ModelLoadError
from pipeline.model.runtime import RANDOM_INIT_SEED, build_feature_model, load_feature_model
from pipeline.model.spec import ModelSpec


def test_random_init_is_identical_across_loads():
    """`--weights none` must give every worker the same random model."""
    spec = ModelSpec("MobileNetV3Small", (32, 32), None)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first = load_feature_model(spec, 2)(pixels)["embedding"]
    second = load_feature_model(spec, 2)(pixels)["embedding"]
    assert first.shape == (2, 576)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first).sum() > 0


@pytest.mark.parametrize("count", [1, 5])
def test_real_model_padding_does_not_change_vectors(count):
    model = load_feature_model(ModelSpec("MobileNetV3Small", (32, 32), None), 5)
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    full = model(pixels)["embedding"]
    part = model(pixels[:count])["embedding"]
    np.testing.assert_allclose(part, full[:count], rtol=1e-5, atol=1e-6)


def vectors(spec, jit_compile=False):
    pixels = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    return build_feature_model(spec, batch_size=3, jit_compile=jit_compile)(pixels)["embedding"]


def relative_l2(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def test_xla_compiled_model_gives_the_same_vectors():
    spec = ModelSpec("MobileNetV3Small", (32, 32), None)
    assert relative_l2(vectors(spec, jit_compile=True), vectors(spec)).max() <= 1e-5


@functools.lru_cache(maxsize=None)
def float32_resnet50_vectors():
    """The float32 reference of both mixed-precision cases, computed once."""
    return vectors(ModelSpec("ResNet50", (32, 32), None))


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_computes_in_low_precision_and_returns_float32(precision):
    import keras

    reference = float32_resnet50_vectors()
    low = vectors(ModelSpec("ResNet50", (32, 32), None, precision=precision))
    assert low.dtype == np.float32
    error = relative_l2(low, reference).max()
    assert 0 < error < 0.1  # really computed in 16 bits, and still the same features
    assert keras.mixed_precision.global_policy().name == "float32"  # the process policy is restored


def test_predictions_spec_gives_the_full_models_embedding_and_probabilities():
    """With `predictions`, the compiled model returns the classifier's input and the softmax of one
    full model (seeded random weights, as every worker builds them)."""
    import keras

    pixels = np.random.default_rng(4).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    got = build_feature_model(ModelSpec("MobileNetV3Small", (96, 96), None, predictions=5), batch_size=2)(pixels)
    assert sorted(got) == ["embedding", "predictions"]
    assert got["embedding"].shape == (3, 1024) and got["predictions"].shape == (3, 1000)
    assert got["embedding"].dtype == got["predictions"].dtype == np.float32

    keras.utils.set_random_seed(RANDOM_INIT_SEED)
    full = keras.applications.MobileNetV3Small(include_top=True, weights=None, input_shape=(96, 96, 3))
    probe = keras.Model(full.input, [full.get_layer("logits").input, full.output])
    embedding, predictions = probe.predict(preprocess_batch("MobileNetV3Small", pixels), verbose=0)
    np.testing.assert_allclose(got["predictions"], predictions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["embedding"], embedding.reshape(3, -1), rtol=1e-5, atol=1e-6)


def test_tensorflow_loads_without_importing_jax_and_jax_still_imports_after():
    """tf.lite imports jax whenever it is installed (the test extra installs it): featurize hides it
    while TensorFlow loads, so a TensorFlow worker pays no jax import and keeps the user's log level."""
    import os
    import subprocess
    import sys

    script = ("import os, sys\n"
              "from pipeline.model.runtime import tensorflow_without_jax\n"
              "with tensorflow_without_jax():\n"
              "    import tensorflow\n"
              "print('jax' in sys.modules, 'TF_CPP_MIN_LOG_LEVEL' in os.environ)\n"
              "import jax\n"
              "print(jax.numpy.add(1, 2))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "3"]


def test_a_model_that_cannot_be_built_is_one_sentence(tmp_path):
    weights = tmp_path / "other.weights.h5"
    weights.write_bytes(b"not an HDF5 file")
    with pytest.raises(ModelLoadError) as error:
        load_feature_model(ModelSpec("MobileNetV3Small", (32, 32), str(weights)), 2)
    assert error.value.sentence.startswith(f"weights {str(weights)!r} do not fit MobileNetV3Small at 32x32 (")
    assert error.value.sentence.endswith("give a weights file saved from MobileNetV3Small, or --weights imagenet or none")


def test_a_backend_other_than_the_loaded_one_is_refused(monkeypatch, tmp_path):
    import keras

    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):  # what asking for jax sets: undone after the test
        monkeypatch.setenv(name, str(tmp_path) if name.endswith("DIR") else "0")

    with pytest.raises(RuntimeError, match="keras_backend 'jax' was asked for, but Keras already runs on"):
        load_feature_model(ModelSpec("MobileNetV3Small", (32, 32), None), 2, keras_backend="jax")
    assert keras.backend.backend() == "tensorflow"
