"""Featurize's own Keras layers: GeM pooling and L2 normalisation.

Defined at module level, as Keras defines its layers, so they are registered once and
serialise by name. This module imports Keras at its top: import it only where Keras may
load (the model builder, `pipeline.model.keras_models`), never from a module the launcher or
`pipeline.job.config` imports eagerly (workers set KERAS_BACKEND and thread caps first).
"""
from __future__ import annotations

import keras
from keras import ops

GEM_EPSILON = 1e-6
L2_EPSILON = 1e-12


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
