"""TFRecord and Parquet shards: field rules, keys, one row or one error row per record, streaming."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.record_shards import PARQUET_BATCH_ROWS, read_record_image, scan_record_keys, shard_fields
from pipeline.records import ErrorRecord, ImageRecord, RecordFields, ScanMismatch, WorkUnit
from pipeline.sources import read_uri, scan_unit_keys, unit_records
from tests.test_tfrecord import example, write


def unit(layout, shard, name, fields=RecordFields()):
    return WorkUnit(f"{layout}-x", layout, str(shard), name=name, fields=fields)


def as_tuples(items):
    return [(type(item).__name__, item.key, item.uri.rsplit("#", 1)[-1],
             item.data if isinstance(item, ImageRecord) else item.error_type) for item in items]


def test_tfrecord_fields_follow_the_default_rules(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write(shard, [
        example(**{"image/encoded": b"IMG0", "image/filename": b"cats/0.jpg"}),   # key from image/filename
        example(jpg=b"IMG1", key=b"k1", **{"image/filename": b"ignored.jpg"}),   # `key` wins over filename
        example(png=b"IMG2"),                                                       # no key field: SHARD:INDEX
        example(label=[1], key=b"k3"),                                              # no image field: error row
        b"\xff\x01 not an example",                                                 # not an Example: error row
    ])
    got = as_tuples(unit_records(unit("tfrecord", shard, "a.tfrecord")))
    assert got == [("ImageRecord", "cats/0.jpg", "0", b"IMG0"), ("ImageRecord", "k1", "1", b"IMG1"),
                   ("ImageRecord", "a.tfrecord:2", "2", b"IMG2"), ("ErrorRecord", "k3", "3", "MissingImage"),
                   ("ErrorRecord", "a.tfrecord:4", "4", "TFRecordError")]
    errors = [item for item in unit_records(unit("tfrecord", shard, "a.tfrecord")) if isinstance(item, ErrorRecord)]
    assert "has no image field any of image/encoded" in errors[0].message and "label" in errors[0].message
    assert "not a tf.train.Example" in errors[1].message
    assert scan_unit_keys(unit("tfrecord", shard, "a.tfrecord")) == [
        "cats/0.jpg", "k1", "a.tfrecord:2", "k3", "a.tfrecord:4"]


def test_named_fields_override_the_defaults(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write(shard, [example(jpg=b"A", thumb=b"a", id=[7]), example(jpg=b"B", thumb=b"b")])
    got = as_tuples(unit_records(unit("tfrecord", shard, "a.tfrecord", RecordFields(image="thumb", key="id"))))
    assert got == [("ImageRecord", "7", "0", b"a"), ("ImageRecord", "a.tfrecord:1", "1", b"b")]


def test_a_truncated_tfrecord_keeps_the_records_before_the_break(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write(shard, [example(jpg=b"A" * 50, key=f"k{i}".encode()) for i in range(3)])
    shard.write_bytes(shard.read_bytes()[:-20])
    got = list(unit_records(unit("tfrecord", shard, "a.tfrecord")))
    assert [item.key for item in got] == ["k0", "k1", "a.tfrecord:2"]
    assert isinstance(got[-1], ErrorRecord) and got[-1].error_type == "TFRecordError"
    assert "record 2 is truncated" in got[-1].message
    assert scan_unit_keys(unit("tfrecord", shard, "a.tfrecord")) == ["k0", "k1"]


def test_losers_become_duplicate_key_rows_and_a_longer_shard_than_scanned_is_refused(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write(shard, [example(jpg=b"A", key=b"same"), example(jpg=b"B", key=b"other")])
    got = list(unit_records(unit("tfrecord", shard, "a.tfrecord"), {0: "b.tfrecord (image member 4)"}))
    assert isinstance(got[0], ErrorRecord) and got[0].error_type == "DuplicateKey"
    assert "b.tfrecord (image member 4)" in got[0].message and isinstance(got[1], ImageRecord)
    with pytest.raises(ScanMismatch, match="saw 1 records"):
        list(unit_records(unit("tfrecord", shard, "a.tfrecord"), {}, scanned=1))


def parquet_shard(path, rows, row_group_size=3, **columns):
    table = pa.table({"key": pa.array([r[0] for r in rows], pa.string()),
                      "jpg": pa.array([r[1] for r in rows], pa.binary()), **columns})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_rows_stream_by_row_group_with_keys_and_null_images(tmp_path):
    shard = tmp_path / "p.parquet"
    rows = [(f"k{i}", f"IMG{i}".encode()) for i in range(PARQUET_BATCH_ROWS + 10)]
    rows[5] = ("k5", None)
    rows[7] = (None, b"IMG7")
    parquet_shard(shard, rows, row_group_size=100, url=pa.array(["http://x"] * len(rows)))
    got = list(unit_records(unit("parquet", shard, "p.parquet")))
    assert len(got) == len(rows)
    assert [item.key for item in got[:8]] == ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "p.parquet:7"]
    assert isinstance(got[5], ErrorRecord) and got[5].error_type == "MissingImage" and "null" in got[5].message
    assert got[-1].data == f"IMG{len(rows) - 1}".encode() and got[-1].uri == f"{shard}#{len(rows) - 1}"
    assert scan_unit_keys(unit("parquet", shard, "p.parquet")) == [item.key for item in got]


def test_parquet_without_an_image_column_is_one_error_row_naming_its_columns(tmp_path):
    shard = tmp_path / "p.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "caption": ["x", "y"]}), shard)
    got = list(unit_records(unit("parquet", shard, "p.parquet")))
    assert len(got) == 1 and got[0].error_type == "ShardFieldError"
    assert "caption" in got[0].message and "--image-field" in got[0].message
    assert scan_record_keys("parquet", str(shard), RecordFields(), "p.parquet") == []


def test_parquet_keys_without_a_key_column_are_positions(tmp_path):
    shard = tmp_path / "p.parquet"
    pq.write_table(pa.table({"image": pa.array([b"a", b"b", b"c"], pa.binary())}), shard)
    assert scan_record_keys("parquet", str(shard), RecordFields(), "dir/p.parquet") == [
        "dir/p.parquet:0", "dir/p.parquet:1", "dir/p.parquet:2"]


def test_a_record_uri_reads_back_its_image(tmp_path):
    write(tmp_path / "a.tfrecord", [example(jpg=b"A"), example(jpg=b"B")])
    parquet_shard(tmp_path / "p.parquet", [("x", b"X"), ("y", b"Y")])
    assert read_uri(f"{tmp_path}/a.tfrecord#1") == b"B"
    assert read_uri(f"{tmp_path}/p.parquet#0") == b"X"
    assert read_record_image("parquet", str(tmp_path / "p.parquet"), 1) == b"Y"
    with pytest.raises(FileNotFoundError, match="no record 5"):
        read_uri(f"{tmp_path}/a.tfrecord#5")
    assert shard_fields("parquet", str(tmp_path / "p.parquet")) == ["key", "jpg"]
    assert shard_fields("tfrecord", str(tmp_path / "a.tfrecord")) == ["jpg"]


@pytest.mark.parametrize("layout", ["tfrecord", "parquet"])
def test_a_missing_or_unreadable_shard_is_one_error_row_keyed_by_the_shard(layout, tmp_path):
    missing = unit(layout, tmp_path / f"gone.{layout}", f"gone.{layout}")
    (tmp_path / f"junk.{layout}").write_bytes(b"this is not a shard at all")
    junk = unit(layout, tmp_path / f"junk.{layout}", f"junk.{layout}")
    for shard, error_type in ((missing, "FileNotFoundError"), (junk, None)):
        got = list(unit_records(shard))
        assert len(got) == 1 and isinstance(got[0], ErrorRecord), got
        assert (got[0].key, got[0].uri, got[0].stage) == (shard.name, shard.source, "read")
        assert error_type is None or got[0].error_type == error_type
        assert scan_unit_keys(shard) == []
