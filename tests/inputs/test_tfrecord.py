"""The TFRecord container and tf.train.Example, read without TensorFlow, checked against files
TensorFlow itself writes."""
import gzip
import io

import numpy as np
import pytest
import tensorflow as tf

from pipeline.inputs.tfrecord import TFRecordError, iter_records, parse_example
from tests.helpers.tfrecords import example, write_tfrecord


def test_records_written_by_tensorflow_read_back_byte_for_byte(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 300, example(key=b"a")]
    write_tfrecord(tmp_path / "a.tfrecord", records)
    with open(tmp_path / "a.tfrecord", "rb") as handle:
        assert list(iter_records(handle)) == records


def test_gzip_tfrecords_read_through_a_decompressing_handle(tmp_path):
    records = [example(key=f"k{i}".encode()) for i in range(5)]
    write_tfrecord(tmp_path / "a.tfrecord.gz", records, tf.io.TFRecordOptions(compression_type="GZIP"))
    with gzip.open(tmp_path / "a.tfrecord.gz", "rb") as handle:
        assert list(iter_records(handle)) == records


def test_examples_parse_to_the_values_tensorflow_wrote():
    image = bytes(range(256)) * 40
    parsed = parse_example(example(**{"image/encoded": image, "image/filename": b"dir/x.jpg",
                                      "label": [3, -7, 2 ** 40], "bbox": [0.25, -1.5], "empty": []}))
    assert parsed["image/encoded"] == [image]
    assert parsed["image/filename"] == [b"dir/x.jpg"]
    assert parsed["label"] == [3, -7, 2 ** 40]
    assert np.allclose(parsed["bbox"], [0.25, -1.5])
    assert parsed["empty"] == []
    # Parsed as TensorFlow parses it: the same feature names, nothing invented.
    assert sorted(parsed) == sorted(tf.train.Example.FromString(
        example(**{"image/encoded": image, "image/filename": b"dir/x.jpg", "label": [3, -7, 2 ** 40],
                   "bbox": [0.25, -1.5], "empty": []})).features.feature)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-3], "record 1 is truncated"),
    (lambda data: data[:len(data) // 2 + 5] + b"\x00" + data[len(data) // 2 + 6:], "record 1 is corrupt"),
    (lambda data: data + b"\x01\x02", "record 2 is truncated"),
])
def test_a_truncated_or_corrupt_record_is_named_after_the_good_ones(tmp_path, damage, message):
    first, second = example(key=b"a"), example(key=b"b", data=b"z" * 100)
    write_tfrecord(tmp_path / "a.tfrecord", [first, second])
    data = damage((tmp_path / "a.tfrecord").read_bytes())
    read = []
    with pytest.raises(TFRecordError, match=message):
        for record in iter_records(io.BytesIO(data)):
            read.append(record)
    assert read[0] == first


def test_a_record_that_is_not_an_example_raises_tfrecord_error():
    with pytest.raises(TFRecordError):
        parse_example(b"\x0a\xff\xff\xff\xff\x0f")  # a field longer than the message
