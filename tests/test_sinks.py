"""WriteFeatures' parts: the schema and the manifest's check that nothing was lost."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sinks import ERROR_SCHEMA, FINGERPRINT_KEY, MANIFEST, _WriteManifest, feature_schema


def test_feature_schema_types_and_fingerprint():
    schema = feature_schema({"embedding": 8}, "float16", {"backbone": "X"})
    assert schema.field("embedding").type == pa.list_(pa.float16(), 8)
    assert schema.field("width").type == pa.int32()
    assert json.loads(schema.metadata[FINGERPRINT_KEY]) == {"backbone": "X"}


def write_shards(tmp_path, rows, stages):
    (tmp_path / "features").mkdir()
    (tmp_path / "errors").mkdir()
    features = tmp_path / "features" / "features-00000-of-00001.parquet"
    pq.write_table(pa.table({"key": [str(i) for i in range(rows)]}), features)
    errors = tmp_path / "errors" / "errors-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"key": s, "uri": s, "stage": s, "error_type": "E", "message": "m"} for s in stages], ERROR_SCHEMA), errors)
    return [str(features)], [str(errors)]


def test_manifest_counts_what_was_written(tmp_path):
    features, errors = write_shards(tmp_path, 3, ["decode", "decode", "read"])
    step = _WriteManifest(str(tmp_path), {"format": "parquet"}, started_at=0.0)
    [document] = list(step.process(None, features, errors, 6))
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk == document
    assert on_disk["counts"] == {"inputs": 6, "rows": 3, "errors": 3,
                                 "errors_by_stage": {"read": 1, "decode": 2, "infer": 0, "write": 0}}
    assert on_disk["files"] == {"features": ["features/features-00000-of-00001.parquet"],
                                "errors": ["errors/errors-00000-of-00001.parquet"]}
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_refuses_when_inputs_went_missing(tmp_path):
    features, errors = write_shards(tmp_path, 3, ["decode"])
    step = _WriteManifest(str(tmp_path), {}, started_at=0.0)
    with pytest.raises(RuntimeError, match="5 read but 3 feature rows \\+ 1 error rows"):
        list(step.process(None, features, errors, 5))
    assert not (tmp_path / MANIFEST).exists()
