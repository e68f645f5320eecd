"""Helpers shared by the tests of models and weights files: random images, Keras's own
preprocessing, relative errors, legacy weights files written the way Keras 2 wrote them."""
from pathlib import Path

import numpy as np


def relative_l2(got, want) -> np.ndarray:
    """||a - b|| / ||b|| per row: random-weight features can be tiny, so never an absolute tolerance."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


def images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def keras_preprocess(backbone, x: np.ndarray) -> np.ndarray:
    import keras

    return getattr(keras.applications, backbone.module).preprocess_input(x.copy())  # it edits in place


def save_legacy_h5(model, path: Path) -> None:
    """A weights-only legacy HDF5 file, laid out like the ImageNet files Keras downloads."""
    try:
        import h5py
        from keras.src.legacy.saving import legacy_h5_format
    except ImportError:  # pragma: no cover - fall back to the public (full-model) HDF5 save
        model.save(str(path))
        return
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
