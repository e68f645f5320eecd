"""The run's stages, without a pipeline: a store row, the stage counters, decoding one record."""
import numpy as np

from pipeline.elements import ErrorRecord, ImageMeta, ImageRecord
from pipeline.images import DecodeSpec
from pipeline.job.stages import RunCounters, TopClasses, decode_record, feature_row
from pipeline.model.predictions import CLASSIFIER_OUTPUT, IDS, NAMES, SCORES


def test_a_row_holds_vectors_in_the_stores_dtype_and_the_top_classes():
    meta = ImageMeta("k", "u", 3, 4)
    row = feature_row(meta, {"embedding": np.arange(3, dtype=np.float64),
                             CLASSIFIER_OUTPUT: np.array([0.1, 0.6, 0.3])}, np.dtype("float16"),
                      TopClasses(2, ["a", "b", "c"]))
    assert (row["key"], row["uri"], row["width"], row["height"]) == ("k", "u", 3, 4)
    assert row["embedding"].dtype == np.float16 and CLASSIFIER_OUTPUT not in row
    assert row[IDS].tolist() == [1, 2] and row[NAMES] == ["b", "c"] and row[SCORES].dtype == np.float32


def test_an_undecodable_record_is_a_decode_error_row_and_is_counted():
    metrics = RunCounters()
    record = ImageRecord("bad.jpg", "/in/bad.jpg", b"not an image")
    metrics.read(record)
    decoded = decode_record(record, DecodeSpec(8, 8))
    metrics.decoded(decoded)
    assert isinstance(decoded, ErrorRecord) and decoded.stage == "decode" and decoded.key == "bad.jpg"
    assert metrics.pending["inputs"] == 1 and metrics.pending["bytes_read"] == len(b"not an image")
    assert metrics.pending["decode_errors"] == 1 and metrics.pending[f"decode_errors_{decoded.error_type}"] == 1
