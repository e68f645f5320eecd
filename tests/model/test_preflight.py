"""pipeline.model.preflight: the launcher builds a model once per machine (a marker in the cache says so), and
a model that cannot be built is one sentence."""
import os

import pytest

from pipeline.model import preflight
from pipeline.model.failures import ModelLoadError
from pipeline.model.spec import ModelSpec
from pipeline.model.weights_cache import sha256_of
from tests.helpers.runs import TEST_MODEL, TEST_SIZE


def test_a_model_built_once_is_not_built_again_and_a_broken_file_is_one_sentence(small_weights, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights, weights_sha256=sha256_of(small_weights))
    builds = []
    real = preflight.build_keras_model
    monkeypatch.setattr(preflight, "build_keras_model", lambda s: builds.append(s) or real(s))
    preflight.check_model(spec)
    preflight.check_model(spec)
    assert builds == [spec] and os.path.exists(preflight._marker(spec))
    preflight.check_model(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), None))  # random init: nothing to check
    assert len(builds) == 1
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(ModelLoadError, match="broken.weights.h5"):
        preflight.check_model(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), str(broken),
                                        weights_sha256=sha256_of(str(broken))))
