"""What a store is, without a pipeline: the run's fingerprint and the specs it gives, and the comparison
every --resume makes with a store's identity."""
import dataclasses
import json

import pytest

from pipeline.errors import ConfigError
from pipeline.images import DecodeSpec
from pipeline.job.identity import check_same_store, run_fingerprint
from pipeline.job.runner import parse_run_args
from pipeline.model.spec import ModelSpec
from pipeline.store.fingerprint import Fingerprint

STATE = {"fingerprint": {"backbone": "ResNet50", "weights": "/a/w.h5", "weights_sha256": "ab" * 32,
                         "pooling": ["avg"], "versions": {"keras": "3.3"}},
         "format": "parquet", "layout": "files", "key_root": "/in", "record_fields": [None, None]}


def test_the_launchers_fingerprint_is_built_once_and_gives_both_specs(tmp_path):
    """The fingerprint JSON a run writes keeps its keys and order (old stores resume), and the model and
    decode specs the workers compute with are the fingerprint's own: the store's parse gives the same."""
    legacy = tmp_path / "legacy.h5"  # only its name and given sha256 are used here
    legacy.write_bytes(b"")

    def config_of(*flags):
        return parse_run_args(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *flags])[0]

    config = config_of("--model", "MobileNetV3Small", "--weights", str(legacy), "--weights-ordering", "th",
                       "--image-size", "64x80", "--layers", "expanded_conv_project_bn", "--pooling", "gem,max",
                       "--gem-p", "2.5", "--l2-normalize", "--precision", "mixed_float16", "--resize", "center-crop",
                       "--interpolation", "bicubic", "--max-pixels", "5000000", "--no-jpeg-draft",
                       "--no-exif-transpose", "--dtype", "float16")
    fingerprint = run_fingerprint(config, {"embedding": 8}, "cd" * 32)
    document = fingerprint.to_json()
    assert list(document) == ["backbone", "weights", "weights_sha256", "weights_ordering", "predictions",
                              "input_size", "resize", "interpolation", "jpeg_draft", "exif_transpose", "resize_in",
                              "preprocess", "layers", "pooling", "gem_p", "l2_normalize", "outputs", "dtype",
                              "precision", "keras_backend", "family", "versions"]
    assert document["input_size"] == [64, 80] and document["pooling"] == ["gem", "max"]
    assert fingerprint.model_spec() == ModelSpec(
        "MobileNetV3Small", (64, 80), str(legacy), ("expanded_conv_project_bn",), ("gem", "max"), 2.5, True,
        weights_sha256="cd" * 32, precision="mixed_float16", weights_ordering="th", predictions=0)
    assert fingerprint.decode_spec(config.max_pixels) == DecodeSpec(64, 80, "center-crop", "bicubic", 5_000_000,
                                                                    False, False)
    stored = Fingerprint.from_json(document)
    assert stored.model_spec() == fingerprint.model_spec()
    assert stored.decode_spec(config.max_pixels) == fingerprint.decode_spec(config.max_pixels)
    # "none" is stored as typed and computes with no weights file; no sha256, no kernel ordering
    random_init = run_fingerprint(config_of("--weights", "none", "--predictions", "5"), {"embedding": 8}, None)
    assert (random_init.weights, random_init.weights_ordering, random_init.predictions) == ("none", None, 5)
    assert random_init.model_spec().weights is None and random_init.model_spec().weights_ordering == "auto"
    # without a GeM pooling p decides nothing: not stored, and the spec carries the default
    no_gem = run_fingerprint(config_of("--pooling", "avg", "--gem-p", "2"), {"embedding": 8}, None)
    assert no_gem.gem_p is None and no_gem.model_spec() == dataclasses.replace(no_gem.model_spec(), gem_p=3.0)


def test_a_resumed_store_must_match_on_what_decides_the_vectors_and_the_layout():
    same_file_elsewhere = json.loads(json.dumps(STATE))
    same_file_elsewhere["fingerprint"].update(weights="/b/w.h5", versions={"keras": "3.9"})
    check_same_store("out", STATE, same_file_elsewhere)  # versions are reported, not enforced
    other_pooling = json.loads(json.dumps(STATE))
    other_pooling["fingerprint"]["pooling"] = ["max"]
    with pytest.raises(ConfigError, match="made with --pooling avg but this run has --pooling max"):
        check_same_store("out", STATE, other_pooling)
    with pytest.raises(ConfigError, match="made with --format parquet but this run has --format hdf5"):
        check_same_store("out", STATE, {**STATE, "format": "hdf5"})


def test_a_store_resized_on_the_host_is_not_resumed_with_the_resize_in_the_model():
    model = json.loads(json.dumps(STATE))
    model["fingerprint"]["resize_in"] = "model"
    with pytest.raises(ConfigError, match="made with --resize-in host but this run has --resize-in model"):
        check_same_store("out", STATE, model)  # a store from before the field was resized on the host
    host = json.loads(json.dumps(STATE))
    host["fingerprint"]["resize_in"] = "host"
    check_same_store("out", STATE, host)
    with pytest.raises(ConfigError, match="made with --resize-in model but this run has --resize-in host"):
        check_same_store("out", model, host)
