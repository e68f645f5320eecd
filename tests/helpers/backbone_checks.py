"""Each backbone builds with its registered dims: the check, run by tests/model/test_keras_models.py
in its own process and, for half of the backbones, in a helper process beside it."""
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.model import backbones, keras_models
from pipeline.model.backbones import BACKBONES
from tests.helpers.keras_helpers import images


def check_backbone_builds_with_its_registered_dim(name):
    """Smallest legal input, weights=None: avg and max give `dim`; one size smaller is refused."""
    import keras

    backbone = BACKBONES[name]
    side = backbone.min_size
    with pytest.raises(ValueError):  # min_size really is Keras' minimum (refused before building)
        getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(side - 1, side - 1, 3))
    model = keras_models.build_pooled_model(backbone, (side, side), None, poolings=["avg", "max"])
    final = keras_models.default_layer(backbone)
    out = model(backbones.preprocess_batch(backbone, images(1, side)))
    assert sorted(out) == sorted([f"{final}/avg", f"{final}/max"])
    for value in out.values():
        value = np.asarray(value)
        assert value.shape == (1, backbone.dim) and value.dtype == np.float32
        assert np.isfinite(value).all()


def check_backbones_in_helper(out_dir: str, names: list[str]) -> None:
    """The helper's work: `out_dir/NAME` holds "" when NAME passed, else the traceback."""
    import traceback

    import keras

    for name in names:
        try:
            check_backbone_builds_with_its_registered_dim(name)
            outcome = ""
        except BaseException:  # noqa: BLE001 - reported to the test of this backbone
            outcome = traceback.format_exc()
        keras.backend.clear_session()
        Path(out_dir, f"{name}.tmp").write_text(outcome)
        os.replace(Path(out_dir, f"{name}.tmp"), Path(out_dir, name))
