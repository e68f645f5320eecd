"""The model: backbones, Keras builders, weights, the inference handler. Keras only inside functions; Beam only in handler.py."""
