"""KerasBackboneHandler without a pipeline: batching, padding, pairing metas with vectors."""
import functools

import numpy as np
import pytest

from pipeline.model.handler import KerasBackboneHandler

from pipeline.model.runtime import FeatureModel, build_feature_model

from pipeline.model.spec import ModelSpec
from pipeline.elements import ImageMeta

SPEC = ModelSpec("MobileNetV3Small", (4, 4), None)


def fake_model(batch_size, seen_shapes):
    """A stand-in backbone: the vector of an image is its first three pixel values."""
    def predict(pixels):
        seen_shapes.append(pixels.shape)
        return {"embedding": pixels.reshape(len(pixels), -1)[:, :3].astype(np.float32)}
    return FeatureModel(batch_size, predict)


def example(i):
    return ImageMeta(f"k{i}", f"u{i}", 10 + i, 20 + i), np.full((4, 4, 3), i, np.uint8)


def test_partial_batch_is_padded_to_the_compiled_shape_and_padding_dropped():
    shapes = []
    handler = KerasBackboneHandler(SPEC, batch_size=8)
    batch = [example(i) for i in range(3)]
    results = handler.run_inference(batch, fake_model(8, shapes))
    assert shapes == [(8, 4, 4, 3)]
    assert [meta.key for meta, _ in results] == ["k0", "k1", "k2"]
    for i, (meta, outputs) in enumerate(results):
        assert meta == batch[i][0]
        np.testing.assert_array_equal(outputs["embedding"], [i, i, i])


def test_oversized_batch_is_split_into_compiled_shapes():
    shapes = []
    handler = KerasBackboneHandler(SPEC, batch_size=4)
    results = handler.run_inference([example(i) for i in range(10)], fake_model(4, shapes))
    assert shapes == [(4, 4, 4, 3)] * 3
    assert [float(outputs["embedding"][0]) for _, outputs in results] == list(range(10))


def test_batching_kwargs_and_bytes():
    handler = KerasBackboneHandler(SPEC, batch_size=16, min_batch_size=4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 16}
    assert KerasBackboneHandler(SPEC, batch_size=16).batch_elements_kwargs() == {
        "min_batch_size": 16, "max_batch_size": 16}
    assert handler.get_num_bytes([example(0), example(1)]) == 2 * 4 * 4 * 3


def test_environment_reaches_the_worker_before_keras(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    handler = KerasBackboneHandler(SPEC, keras_backend="jax", env_vars={"FEATURIZE_TEST": "1"})
    handler.set_environment_vars()
    import os
    assert os.environ["KERAS_BACKEND"] == "jax" and os.environ["FEATURIZE_TEST"] == "1"


def test_random_init_is_identical_across_loads():
    """`--weights none` must give every worker the same random model."""
    handler = KerasBackboneHandler(ModelSpec("MobileNetV3Small", (32, 32), None), batch_size=2)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first = handler.load_model()(pixels)["embedding"]
    second = handler.load_model()(pixels)["embedding"]
    assert first.shape == (2, 576)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first).sum() > 0


@pytest.mark.parametrize("count", [1, 5])
def test_real_model_padding_does_not_change_vectors(count):
    handler = KerasBackboneHandler(ModelSpec("MobileNetV3Small", (32, 32), None), batch_size=5)
    model = handler.load_model()
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


def test_model_shared_across_processes_is_requested_through_beam():
    handler = KerasBackboneHandler(SPEC, share_across_processes=True)
    assert handler.share_model_across_processes() is True
    assert KerasBackboneHandler(SPEC).share_model_across_processes() is False


def test_predictions_spec_gives_the_full_models_embedding_and_probabilities():
    """With `predictions`, the compiled model returns the classifier's input and the softmax of one
    full model (seeded random weights, as every worker builds them)."""
    import keras

    from pipeline.model.backbones import preprocess_batch
    from pipeline.model.runtime import RANDOM_INIT_SEED

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


def oom_model(batch_size, limit, shapes):
    """A fake backbone that runs out of (accelerator) memory above `limit` images a call, as a
    GPU does; its vectors are the first three pixel values."""
    import tensorflow as tf

    def predict_for(size):
        def predict(pixels):
            shapes.append(pixels.shape[0])
            if len(pixels) > limit:
                raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor of {size} images")
            return {"embedding": pixels.reshape(len(pixels), -1)[:, :3].astype(np.float32)}
        return predict
    return FeatureModel(batch_size, predict_for(batch_size), predict_for)


def test_out_of_memory_halves_the_batch_keeps_it_and_loses_nothing():
    shapes = []
    handler = KerasBackboneHandler(SPEC, batch_size=16)
    model = oom_model(16, limit=5, shapes=shapes)
    results = handler.run_inference([example(i) for i in range(11)], model)
    assert [float(outputs["embedding"][0]) for _, outputs in results] == list(range(11))
    assert model.current_batch_size() == 4 and model.backoffs == 2  # 16 -> 8 -> 4
    assert shapes == [16, 8, 4, 4, 4]  # 11 images at 4: three padded calls after two failed ones
    shapes.clear()
    handler.run_inference([example(i) for i in range(3)], model)
    assert shapes == [4]  # remembered: no second try at 16


def test_out_of_memory_at_batch_size_one_and_other_errors_raise():
    import tensorflow as tf

    with pytest.raises(tf.errors.ResourceExhaustedError):
        KerasBackboneHandler(SPEC, batch_size=2).run_inference([example(0)], oom_model(2, limit=0, shapes=[]))
    shapes = []

    def broken(pixels):
        shapes.append(len(pixels))
        raise ValueError("not an out-of-memory error")
    model = FeatureModel(8, broken, lambda size: broken)
    with pytest.raises(ValueError):
        KerasBackboneHandler(SPEC, batch_size=8).run_inference([example(0)], model)
    assert shapes == [8] and model.batch_size == 8


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
