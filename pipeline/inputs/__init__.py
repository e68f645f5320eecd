"""Inputs: what --input names, listing it, and reading a unit's records. Never imports TensorFlow or Keras."""
