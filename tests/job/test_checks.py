"""The launcher's checks, without a model or a pipeline: the output folder and a resumed store's identity."""
import json

import pytest

from pipeline.errors import ConfigError
from pipeline.job.checks import check_same_store, committed_for, output_is_empty
from pipeline.job.config import RunConfig

STATE = {"fingerprint": {"backbone": "ResNet50", "weights": "/a/w.h5", "weights_sha256": "ab" * 32,
                         "pooling": ["avg"], "versions": {"keras": "3.3"}},
         "format": "parquet", "layout": "files", "key_root": "/in", "record_fields": [None, None]}


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


def test_a_non_empty_output_needs_resume_or_overwrite_and_a_resume_needs_a_store(tmp_path):
    out = tmp_path / "out"
    assert output_is_empty(str(out))
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert not output_is_empty(str(out))
    with pytest.raises(ConfigError, match="not empty .*holds files.*--resume.*--overwrite"):
        committed_for(RunConfig(input="i", output=str(out)), STATE)
    with pytest.raises(ConfigError, match="is not a featurize store"):
        committed_for(RunConfig(input="i", output=str(out), resume=True), STATE)
    assert list(committed_for(RunConfig(input="i", output=str(out), overwrite=True), STATE)) == []
