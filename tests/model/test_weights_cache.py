"""Weights from any Beam filesystem: copied once per machine into a sha256-keyed cache, verified."""
import hashlib
import re
from pathlib import Path

import pytest

from pipeline.model import weights_cache as weights
from pipeline.model.weights_cache import WeightsMismatch, stage_weights


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def hashes(monkeypatch):
    """Counts the cached files stage_weights hashes (the copy hashes as it writes, not through this)."""
    calls = []
    real = weights.sha256_of

    def counting(uri):
        calls.append(uri)
        return real(uri)

    monkeypatch.setattr(weights, "sha256_of", counting)
    return calls


def new_process(monkeypatch):
    """What a fresh worker process knows: no cached file verified yet."""
    monkeypatch.setattr(weights, "_verified", set())


def shared_file(tmp_path, data):
    source = tmp_path / "shared" / "model.weights.h5"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    return source, hashlib.sha256(data).hexdigest()


def test_copied_once_and_reused(tmp_path, cache):
    source, digest = shared_file(tmp_path, b"weights v1")
    local = stage_weights(str(source), digest)
    assert local == str(cache / digest / "model.weights.h5")
    assert open(local, "rb").read() == b"weights v1"
    source.write_bytes(b"changed on shared storage")  # a second call must not read the source again
    assert stage_weights(str(source), digest) == local and open(local, "rb").read() == b"weights v1"
    assert [p.name for p in (cache / digest).iterdir()] == ["model.weights.h5"]  # no partial files left


def test_wrong_digest_is_refused_and_nothing_is_cached(tmp_path, cache):
    source = tmp_path / "w.h5"
    source.write_bytes(b"something else")
    actual = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(WeightsMismatch, match=f"{re.escape(str(source))}.*sha256 {actual}, expected " + "0" * 64):
        stage_weights(str(source), "0" * 64)
    assert list((cache / ("0" * 64)).iterdir()) == []


def test_a_corrupted_cached_file_is_detected_and_replaced_by_a_verified_copy(tmp_path, cache, monkeypatch, hashes):
    source, digest = shared_file(tmp_path, b"weights v1")
    local = stage_weights(str(source), digest)
    for damaged in (b"weights", b"weights v2"):  # truncated, then tampered with
        Path(local).write_bytes(damaged)
        new_process(monkeypatch)
        assert stage_weights(str(source), digest) == local
        assert Path(local).read_bytes() == b"weights v1"
    assert hashes == [local, local]  # each damaged file was hashed, then replaced by a verified copy
    assert [p.name for p in (cache / digest).iterdir()] == ["model.weights.h5"]


def test_an_intact_cache_is_hashed_once_per_process(tmp_path, cache, monkeypatch, hashes):
    source, digest = shared_file(tmp_path, b"weights v1")
    local = stage_weights(str(source), digest)
    assert hashes == []  # the copying process hashed the bytes as it wrote them
    source.unlink()  # from now on only the cache can serve the file
    for _ in range(2):
        new_process(monkeypatch)
        assert all(stage_weights(str(source), digest) == local for _ in range(3))
    assert hashes == [local, local]


def test_a_corrupted_cache_of_a_changed_source_is_refused_and_removed(tmp_path, cache, monkeypatch):
    source, digest = shared_file(tmp_path, b"weights v1")
    Path(stage_weights(str(source), digest)).write_bytes(b"weights")
    source.write_bytes(b"weights v2")
    new_process(monkeypatch)
    changed = hashlib.sha256(b"weights v2").hexdigest()
    with pytest.raises(WeightsMismatch, match=f"{re.escape(str(source))}.*sha256 {changed}, expected {digest}"):
        stage_weights(str(source), digest)
    assert list((cache / digest).iterdir()) == []  # neither the bad cache nor a partial copy
