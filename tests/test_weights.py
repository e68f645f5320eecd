"""Weights from any Beam filesystem: copied once per machine into a sha256-keyed cache, verified."""
import hashlib

import pytest

from pipeline.config import ConfigError
from pipeline.weights import WeightsMismatch, stage_weights


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_copied_once_and_reused(tmp_path, cache):
    source = tmp_path / "shared" / "model.weights.h5"
    source.parent.mkdir()
    source.write_bytes(b"weights v1")
    digest = hashlib.sha256(b"weights v1").hexdigest()
    local = stage_weights(str(source), digest)
    assert local == str(cache / digest / "model.weights.h5")
    assert open(local, "rb").read() == b"weights v1"
    source.write_bytes(b"changed on shared storage")  # a second call must not read the source again
    assert stage_weights(str(source), digest) == local and open(local, "rb").read() == b"weights v1"
    assert [p.name for p in (cache / digest).iterdir()] == ["model.weights.h5"]  # no partial files left


def test_wrong_digest_is_refused_and_nothing_is_cached(tmp_path, cache):
    source = tmp_path / "w.h5"
    source.write_bytes(b"something else")
    with pytest.raises(WeightsMismatch, match="expected " + "0" * 64):
        stage_weights(str(source), "0" * 64)
    assert list((cache / ("0" * 64)).iterdir()) == []


def test_run_stages_weights_through_the_cache_and_checks_the_given_digest(
        zoo_folder, small_weights, tmp_path, cache):
    from tests.test_store import featurize

    digest = hashlib.sha256(open(small_weights, "rb").read()).hexdigest()
    manifest = featurize(zoo_folder, tmp_path / "out", small_weights, "--weights-sha256", digest)
    assert manifest["fingerprint"]["weights_sha256"] == digest
    assert (cache / digest / "mobilenetv3small-notop.weights.h5").exists()
    with pytest.raises(ConfigError, match="does not match"):
        featurize(zoo_folder, tmp_path / "out2", small_weights, "--weights-sha256", "f" * 64)
