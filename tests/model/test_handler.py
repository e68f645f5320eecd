"""KerasBackboneHandler without a pipeline, on fake models: batching, padding, pairing metas with
vectors, out-of-memory halving counted, the environment set before Keras."""
import numpy as np
import pytest

from pipeline.elements import ImageMeta
from pipeline.model.handler import KerasBackboneHandler
from pipeline.model.runtime import FeatureModel
from pipeline.model.spec import ModelSpec

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


def test_model_shared_across_processes_is_requested_through_beam():
    handler = KerasBackboneHandler(SPEC, share_across_processes=True)
    assert handler.share_model_across_processes() is True
    assert KerasBackboneHandler(SPEC).share_model_across_processes() is False


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


class _CountingHandler(KerasBackboneHandler):
    """A handler whose load_model builds the fake model and counts the loads."""

    def __init__(self, poison=None):
        super().__init__(SPEC, batch_size=4)
        self.loads, self._poison = [], poison

    def load_model(self):
        self.loads.append(1)
        model = fake_model(4, [])
        if self._poison is not None:
            real = model.predict
            model.predict = lambda pixels: (_ for _ in ()).throw(ValueError("poison")) \
                if (pixels == self._poison).all(axis=(1, 2, 3)).any() else real(pixels)
        return model


def test_a_loaded_model_loads_once_per_tag_in_a_process_and_not_before_the_first_batch():
    from pipeline.model.handler import LoadedModel

    handler = _CountingHandler()
    first, second = LoadedModel(handler, "tag-once"), LoadedModel(handler, "tag-once")
    assert first.current_batch_size() is None and handler.loads == []
    first.infer([example(1)])
    second.infer([example(2)])
    assert handler.loads == [1] and second.current_batch_size() == 4
    LoadedModel(handler, "tag-other").infer([example(3)])
    assert handler.loads == [1, 1]


def test_a_loaded_model_isolates_the_input_that_fails_alone():
    from pipeline.model.handler import LoadedModel

    model = LoadedModel(_CountingHandler(poison=5), "tag-poison")
    predictions, failures = model.infer([example(i) for i in (1, 5, 7)])
    assert [position for position, _ in failures] == [1] and str(failures[0][1]) == "poison"
    assert predictions[1] is None
    assert [float(p[1]["embedding"][0]) for p in (predictions[0], predictions[2])] == [1.0, 7.0]
    with pytest.raises(ValueError, match="poison"):  # nothing works alone: the model's fault, raised
        model.infer([example(5), example(5)])
