"""Featurize's Keras layers: made once per process, registered by name, GeM and L2 as documented."""
import numpy as np

from pipeline.model.layers import custom_layers


def test_the_layers_are_made_once_and_serialise_by_name():
    import keras

    layers = custom_layers()
    assert custom_layers() is layers  # a builder asks once per model: the classes are made once
    for cls in layers:
        assert keras.saving.get_registered_object(f"featurize>{cls.__name__}") is cls
    gem = layers.GeneralizedMeanPooling2D(p=2.5, name="gem")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gem))
    assert type(again) is layers.GeneralizedMeanPooling2D and again.p == 2.5 and again.epsilon == gem.epsilon


def test_gem_is_avg_at_p_1_and_approaches_max_and_l2_gives_unit_vectors():
    layers = custom_layers()
    x = np.random.default_rng(0).uniform(0.1, 1.0, (2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(layers.GeneralizedMeanPooling2D(p=1.0)(x), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(layers.GeneralizedMeanPooling2D(p=3.0)(x),
                               np.mean(x ** 3, axis=(1, 2)) ** (1 / 3), rtol=1e-5)
    large = np.asarray(layers.GeneralizedMeanPooling2D(p=20.0)(x))
    assert (large <= x.max(axis=(1, 2)) * (1 + 1e-6)).all() and (large >= 0.85 * x.max(axis=(1, 2))).all()
    normed = np.asarray(layers.L2Normalize()(x.reshape(2, -1)))
    np.testing.assert_allclose(np.linalg.norm(normed, axis=-1), [1.0, 1.0], rtol=1e-6)
