"""pipeline.store.schema: the error rows' columns are an ErrorRecord's fields, the feature schema adds the
prediction columns with --predictions, and what featurize may delete is only its own files."""
import fnmatch
import json

import pyarrow as pa

from pipeline.elements import ErrorRecord
from pipeline.inputs.layouts import UNIT_LAYOUTS
from pipeline.model import predictions
from pipeline.store.schema import (ERROR_SCHEMA, FINGERPRINT_KEY, OWNED_PATTERNS, UNIT_PREFIXES, feature_schema)


def test_error_rows_hold_an_error_records_fields_as_strings():
    assert ERROR_SCHEMA.names == list(ErrorRecord._fields) == ["key", "uri", "stage", "error_type", "message"]
    assert all(field.type == pa.string() for field in ERROR_SCHEMA)


def test_the_feature_schema_adds_three_prediction_columns_of_k_with_predictions():
    schema = feature_schema({"block/avg": 8, "block/max": 4}, "float32", {"predictions": 3})
    assert schema.names == ["key", "uri", "width", "height", "block/avg", "block/max", *predictions.COLUMNS]
    assert schema.field(predictions.IDS).type == pa.list_(pa.int32(), 3)
    assert schema.field(predictions.NAMES).type == pa.list_(pa.string(), 3)
    assert schema.field(predictions.SCORES).type == pa.list_(pa.float32(), 3)
    assert schema.field("block/max").type == pa.list_(pa.float32(), 4)
    assert json.loads(schema.metadata[FINGERPRINT_KEY]) == {"predictions": 3}
    assert feature_schema({"embedding": 8}, "float32", {"predictions": 0}).names[-1] == "embedding"


def owned(path):
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in OWNED_PATTERNS)


def test_featurize_owns_its_unit_files_state_manifest_and_index_and_nothing_else():
    assert UNIT_PREFIXES == tuple(f"{layout}-" for layout in UNIT_LAYOUTS)
    for layout in UNIT_LAYOUTS:
        assert owned(f"features/{layout}-00001-of-00003.1a2b3c4d.parquet")
        assert owned(f"errors/{layout}-00001-of-00003.1a2b3c4d.parquet")
    for path in ("features.h5", "features.h5.tmp", "manifest.json", "_featurize/store.json",
                 "_featurize/units/files-00001.json", "index/embedding/vectors.npy"):
        assert owned(path), path
    for path in ("notes.txt", "features/mine.parquet", "errors/README", "manifest.json.bak", "indexes/x"):
        assert not owned(path), path
