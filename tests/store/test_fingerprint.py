"""Fingerprint: the JSON stores hold round-trips key for key, and it converts to the model and decode specs."""

import pytest

from pipeline.job.runner import parse_run_args
from pipeline.store.fingerprint import Fingerprint
from pipeline.model.spec import ModelSpec
from pipeline.images import DecodeSpec
from pipeline.job.identity import run_fingerprint

# A fingerprint as a manifest written before weights_ordering / predictions / keras_backend existed.
OLDER = {"backbone": "ResNet50", "weights": "imagenet", "weights_sha256": None, "input_size": [224, 224],
         "resize": "center-crop", "interpolation": "bicubic", "jpeg_draft": False, "exif_transpose": True,
         "preprocess": "caffe", "layers": None, "pooling": ["avg", "gem"], "gem_p": 2.5, "l2_normalize": True,
         "outputs": {"avg": 2048, "gem": 2048}, "dtype": "float16", "precision": "float32",
         "versions": {"keras": "3.3"}}


def test_the_jobs_fingerprint_round_trips_key_for_key(tmp_path):
    weights = tmp_path / "backbone.weights.h5"  # only its name and given sha256 are used here
    weights.write_bytes(b"")
    config, _ = parse_run_args(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model",
                                "MobileNetV3Small", "--weights", str(weights), "--image-size", "48x64",
                                "--pooling", "avg,max", "--resize", "pad"])
    run = run_fingerprint(config, {"avg": 576, "max": 576}, "ab" * 32)
    spec, document = run.model_spec(), run.to_json()
    assert list(document) == ["backbone", "weights", "weights_sha256", "weights_ordering", "predictions",
                              "input_size", "resize", "interpolation", "jpeg_draft", "exif_transpose", "resize_in",
                              "preprocess", "layers", "pooling", "gem_p", "l2_normalize", "outputs", "dtype",
                              "precision", "keras_backend", "family", "versions"]
    assert document["input_size"] == [48, 64] and document["pooling"] == ["avg", "max"]
    parsed = Fingerprint.from_json(document)
    assert parsed.to_json() == document
    assert parsed.model_spec() == spec  # what embeds a new image is what made the store
    assert parsed.decode_spec(1000) == DecodeSpec(48, 64, "pad", "bilinear", 1000, config.jpeg_draft,
                                                  config.exif_transpose)


def test_an_older_stores_fingerprint_gets_the_defaults_it_was_made_with():
    parsed = Fingerprint.from_json({**OLDER, "a_key_from_the_future": 1})
    assert parsed.predictions == 0 and parsed.weights_ordering is None and parsed.keras_backend == "tensorflow"
    assert parsed.resize_in == "host" and parsed.decode_spec(None).resize_in == "host"
    assert parsed["backbone"] == "ResNet50" and parsed.pooling == ("avg", "gem")
    assert parsed.model_spec() == ModelSpec("ResNet50", (224, 224), "imagenet", None, ("avg", "gem"), 2.5, True)
    assert "a_key_from_the_future" not in parsed.to_json()


def test_a_store_resized_in_the_model_embeds_with_the_resize_in_the_model(tmp_path):
    config, _ = parse_run_args(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model",
                                "MobileNetV3Small", "--weights", "none", "--image-size", "64",
                                "--resize-in", "model", "--interpolation", "bicubic"])
    fingerprint = Fingerprint.from_json(run_fingerprint(config, {"embedding": 576}, None).to_json())
    assert fingerprint.resize_in == "model"
    assert fingerprint.model_spec().resample == "bicubic" and fingerprint.decode_spec(None).resize_in == "model"
    host = Fingerprint.from_json({**fingerprint.to_json(), "resize_in": "host"})
    assert host != fingerprint and host.model_spec().resample is None


def test_fingerprints_compare_by_what_decides_the_numbers_not_versions():
    assert Fingerprint.from_json(OLDER) == Fingerprint.from_json({**OLDER, "versions": {"keras": "3.9"}})
    assert Fingerprint.from_json(OLDER) != Fingerprint.from_json({**OLDER, "resize": "squash"})


def test_a_fingerprint_without_a_model_reads_but_cannot_embed():
    generated = Fingerprint.from_json({"outputs": {"embedding": 4}, "dtype": "float32"})
    assert generated.outputs == {"embedding": 4}
    with pytest.raises(ValueError, match="names no backbone .* so new images cannot be embedded like its rows"):
        generated.model_spec()
    with pytest.raises(ValueError, match="fingerprint lacks outputs; it was not written by featurize"):
        Fingerprint.from_json({"dtype": "float32"})
