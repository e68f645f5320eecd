"""The launcher's checks, without a model or a pipeline: the output folder, and --resume into a store."""
import pytest

from pipeline.errors import ConfigError
from pipeline.job.checks import committed_for, output_is_empty
from pipeline.job.config import RunConfig

STATE = {"fingerprint": {"backbone": "ResNet50", "weights": "/a/w.h5", "weights_sha256": "ab" * 32,
                         "pooling": ["avg"], "versions": {"keras": "3.3"}},
         "format": "parquet", "layout": "files", "key_root": "/in", "record_fields": [None, None]}


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
