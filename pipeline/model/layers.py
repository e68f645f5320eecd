"""Featurize's own Keras layers: GeM pooling and L2 normalisation.

Keras is imported when the classes are first asked for (`custom_layers()`), never at module
import: workers set KERAS_BACKEND and the thread caps before Keras loads. The classes are made
once per process (cached), so Keras registers them once and they serialise by name
(`featurize>GeneralizedMeanPooling2D`, `featurize>L2Normalize`). A builder asks once per model.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

GEM_EPSILON = 1e-6
L2_EPSILON = 1e-12


class CustomLayers(NamedTuple):
    """The layer classes, made for the Keras of this process."""
    GeneralizedMeanPooling2D: type
    L2Normalize: type


@functools.cache
def custom_layers() -> CustomLayers:
    """Featurize's layer classes (Keras is imported here, on the first call)."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="featurize")
    class GeneralizedMeanPooling2D(keras.layers.Layer):
        """(mean over H, W of clip(x, eps) ** p) ** (1 / p) for (N, H, W, C) -> (N, C)."""

        def __init__(self, p: float = 3.0, epsilon: float = GEM_EPSILON, **kwargs):
            super().__init__(**kwargs)
            self.p = float(p)
            self.epsilon = float(epsilon)

        def call(self, inputs):
            x = ops.maximum(inputs, self.epsilon)
            if self.p == 1.0:
                return ops.mean(x, axis=(1, 2))
            return ops.power(ops.mean(ops.power(x, self.p), axis=(1, 2)), 1.0 / self.p)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[-1])

        def get_config(self):
            return {**super().get_config(), "p": self.p, "epsilon": self.epsilon}

    @keras.saving.register_keras_serializable(package="featurize")
    class L2Normalize(keras.layers.Layer):
        """x / max(||x||_2, eps) along the last axis."""

        def __init__(self, epsilon: float = L2_EPSILON, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = float(epsilon)

        def call(self, inputs):
            squared = ops.sum(ops.square(inputs), axis=-1, keepdims=True)
            return inputs * ops.rsqrt(ops.maximum(squared, self.epsilon ** 2))

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "epsilon": self.epsilon}

    return CustomLayers(GeneralizedMeanPooling2D, L2Normalize)
