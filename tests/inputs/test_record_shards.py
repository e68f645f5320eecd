"""TFRecord, Parquet and Arrow shards (those Hugging Face datasets and TensorFlow Datasets write among
them): field rules, keys, types, one row or one error row per record, streaming."""
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.inputs.record_shards import (PARQUET_BATCH_ROWS, check_record_fields, read_record_image, scan_record_keys,
                                           shard_fields)
from pipeline.elements import ErrorRecord, ImageRecord, RecordFields, ScanMismatch, WorkUnit
from pipeline.inputs.listing import file_key, list_inputs, resolve_input
from pipeline.inputs.reading import read_uri, scan_unit_keys, unit_records
from tests.helpers.dataset_tools import hf_dataset, save_to_disk, write_hub_parquet
from tests.helpers.tfrecords import example, write_tfrecord


def unit(layout, shard, name, fields=RecordFields()):
    return WorkUnit(f"{layout}-x", layout, str(shard), name=name, fields=fields)


def as_tuples(items):
    return [(type(item).__name__, item.key, item.uri.rsplit("#", 1)[-1],
             item.data if isinstance(item, ImageRecord) else item.error_type) for item in items]


def test_tfrecord_fields_follow_the_default_rules(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write_tfrecord(shard, [
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
    write_tfrecord(shard, [example(jpg=b"A", thumb=b"a", id=[7]), example(jpg=b"B", thumb=b"b")])
    got = as_tuples(unit_records(unit("tfrecord", shard, "a.tfrecord", RecordFields(image="thumb", key="id"))))
    assert got == [("ImageRecord", "7", "0", b"a"), ("ImageRecord", "a.tfrecord:1", "1", b"b")]


def test_a_truncated_tfrecord_keeps_the_records_before_the_break(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write_tfrecord(shard, [example(jpg=b"A" * 50, key=f"k{i}".encode()) for i in range(3)])
    shard.write_bytes(shard.read_bytes()[:-20])
    got = list(unit_records(unit("tfrecord", shard, "a.tfrecord")))
    assert [item.key for item in got] == ["k0", "k1", "a.tfrecord:2"]
    assert isinstance(got[-1], ErrorRecord) and got[-1].error_type == "TFRecordError"
    assert "record 2 is truncated" in got[-1].message
    assert scan_unit_keys(unit("tfrecord", shard, "a.tfrecord")) == ["k0", "k1"]


def test_losers_become_duplicate_key_rows_and_a_longer_shard_than_scanned_is_refused(tmp_path):
    shard = tmp_path / "a.tfrecord"
    write_tfrecord(shard, [example(jpg=b"A", key=b"same"), example(jpg=b"B", key=b"other")])
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
    write_tfrecord(tmp_path / "a.tfrecord", [example(jpg=b"A"), example(jpg=b"B")])
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


# --------------------------------------------------------------------------- Hugging Face, Arrow, TFDS


def shard_units(spec: str, fields=RecordFields()):
    """resolve_input + list_inputs + the units a run would plan, as a user's --input gives them."""
    listing = list_inputs(resolve_input(spec))
    return listing.layout, [unit(listing.layout, shard, file_key(shard, listing.root), fields)
                            for shard, _, _ in listing.inputs()]


def test_hub_parquet_shards_read_the_image_struct_s_bytes_keyed_by_shard_and_index(tmp_path):
    images = [f"IMG{i}".encode() for i in range(5)]
    spec = write_hub_parquet(tmp_path, hf_dataset(images), shards=2)
    first = tmp_path / "data" / "train-00000-of-00002.parquet"
    assert str(pq.read_schema(first).field("image").type) == "struct<bytes: binary, path: string>"
    layout, units = shard_units(spec)
    got = [as_tuples(unit_records(shard)) for shard in units]
    assert layout == "parquet" and got == [
        [("ImageRecord", f"train-00000-of-00002.parquet:{i}", str(i), images[i]) for i in range(3)],
        [("ImageRecord", f"train-00001-of-00002.parquet:{i}", str(i), images[3 + i]) for i in range(2)]]
    assert scan_unit_keys(units[1]) == ["train-00001-of-00002.parquet:0", "train-00001-of-00002.parquet:1"]
    assert read_uri(f"{first}#2") == images[2]
    check_record_fields("parquet", str(first), RecordFields())  # the struct is an image type
    keyed = as_tuples(unit_records(unit("parquet", first, "x", RecordFields(key="label"))))
    assert [key for _, key, _, _ in keyed] == ["0", "1", "2"]


def test_path_only_rows_read_their_files_relative_to_the_shard_absolute_or_missing(tmp_path, monkeypatch):
    (tmp_path / "data" / "img").mkdir(parents=True)
    for name, data in (("a.png", b"A-BYTES"), ("gone.png", b"")):
        (tmp_path / "data" / "img" / name).write_bytes(data)
    (tmp_path / "b.png").write_bytes(b"B-BYTES")
    paths = ["img/a.png", str(tmp_path / "b.png"), "img/gone.png"]
    monkeypatch.chdir(tmp_path / "data")  # datasets stats relative paths from the working folder while writing
    write_hub_parquet(tmp_path, hf_dataset([None] * 3, paths, decode=False), shards=1)
    (tmp_path / "data" / "img" / "gone.png").unlink()  # moved away after the dataset was written
    shard = tmp_path / "data" / "train-00000-of-00001.parquet"
    # what `datasets` writes for a path-only Image(decode=False) row: the path as given, no bytes
    assert pq.read_table(shard).column("image").to_pylist()[0] == {"bytes": None, "path": "img/a.png"}
    got = list(unit_records(unit("parquet", shard, "train-00000-of-00001.parquet")))
    assert [(type(item).__name__, item.key, item.uri) for item in got] == [
        ("ImageRecord", "train-00000-of-00001.parquet:0", str(tmp_path / "data" / "img" / "a.png")),
        ("ImageRecord", "train-00000-of-00001.parquet:1", str(tmp_path / "b.png")),
        ("ErrorRecord", "train-00000-of-00001.parquet:2", str(tmp_path / "data" / "img" / "gone.png"))]
    assert [got[0].data, got[1].data] == [b"A-BYTES", b"B-BYTES"]
    assert got[2].stage == "read" and got[2].error_type == "FileNotFoundError"
    assert read_uri(f"{shard}#0") == b"A-BYTES"


@pytest.mark.parametrize("splits, keys", [
    ({"train": 5}, ["data-00000-of-00002.arrow:0", "data-00000-of-00002.arrow:1", "data-00000-of-00002.arrow:2",
                    "data-00001-of-00002.arrow:0", "data-00001-of-00002.arrow:1"]),
    ({"train": 3, "test": 2}, ["test/data-00000-of-00001.arrow:0", "test/data-00000-of-00001.arrow:1",
                               "train/data-00000-of-00001.arrow:0", "train/data-00000-of-00001.arrow:1",
                               "train/data-00000-of-00001.arrow:2"]),
])
def test_a_save_to_disk_folder_is_its_arrow_shards(splits, keys, tmp_path):
    images = {name: [f"{name}{i}".encode() for i in range(n)] for name, n in splits.items()}
    folder = save_to_disk(tmp_path / "saved", {name: hf_dataset(data) for name, data in images.items()})
    with open(next((tmp_path / "saved").rglob("data-*.arrow")), "rb") as handle:
        assert handle.read(4) == b"\xff\xff\xff\xff"  # datasets 5 writes the IPC stream format
    layout, units = shard_units(folder)
    got = [item for shard in units for item in unit_records(shard)]
    assert layout == "arrow" and [item.key for item in got] == keys
    expected = images.get("test", []) + images["train"]
    assert [item.data for item in got] == expected
    last = [item.data for item in got if item.uri.startswith(units[-1].source + "#")]
    assert read_uri(f"{units[-1].source}#1") == last[1]
    assert shard_fields("arrow", units[0].source) == ["image", "label"]


@pytest.mark.parametrize("writer", [pa.ipc.new_stream, pa.ipc.new_file])
def test_arrow_ipc_streams_and_files_read_batch_by_batch(writer, tmp_path):
    shard = tmp_path / "part.arrow"
    schema = pa.schema([("key", pa.string()), ("jpg", pa.large_binary())])
    with writer(str(shard), schema) as out:
        for start in (0, 4, 8):  # three record batches: indices go on across them
            out.write_batch(pa.record_batch([[f"k{i}" for i in range(start, start + 4)],
                                             [f"I{i}".encode() for i in range(start, start + 4)]], schema=schema))
    got = as_tuples(unit_records(unit("arrow", shard, "part.arrow")))
    assert got == [("ImageRecord", f"k{i}", str(i), f"I{i}".encode()) for i in range(12)]
    assert read_uri(f"{shard}#9") == b"I9"
    assert scan_unit_keys(unit("arrow", shard, "part.arrow")) == [f"k{i}" for i in range(12)]


def test_values_that_are_not_images_are_error_rows_of_their_record_never_an_exception(tmp_path):
    # Arrow: a union column mixes bytes, a null, an integer and a path with no installed filesystem.
    union = pa.UnionArray.from_dense(pa.array([0, 0, 1, 0, 2], pa.int8()), pa.array([0, 1, 0, 2, 0], pa.int32()),
                                     [pa.array([b"GOOD0", None, b"GOOD3"], pa.binary()), pa.array([7], pa.int64()),
                                      pa.array(["hf://datasets/x/y.png"])])
    with pa.ipc.new_stream(str(tmp_path / "mixed.arrow"), pa.schema([("image", union.type)])) as out:
        out.write_batch(pa.record_batch([union], names=["image"]))
    # Parquet: the image struct with bytes, a null row, and a row with neither bytes nor path.
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": b"GOOD0", "path": None}, None,
                                                {"bytes": None, "path": None}], struct)}), tmp_path / "mixed.parquet")
    # Parquet: a later shard whose image column is integers (the launcher checks the first shard only).
    pq.write_table(pa.table({"image": pa.array([1, 2], pa.int64())}), tmp_path / "ints.parquet")
    arrow = as_tuples(unit_records(unit("arrow", tmp_path / "mixed.arrow", "m")))
    assert arrow == [("ImageRecord", "m:0", "0", b"GOOD0"), ("ErrorRecord", "m:1", "1", "MissingImage"),
                     ("ErrorRecord", "m:2", "2", "WrongImageType"), ("ImageRecord", "m:3", "3", b"GOOD3"),
                     ("ErrorRecord", "m:4", "4", "UnsupportedScheme")]
    parquet = list(unit_records(unit("parquet", tmp_path / "mixed.parquet", "p")))
    assert as_tuples(parquet) == [("ImageRecord", "p:0", "0", b"GOOD0"), ("ErrorRecord", "p:1", "1", "MissingImage"),
                                  ("ErrorRecord", "p:2", "2", "MissingImage")]
    assert "row 1's 'image' is empty (null)" in parquet[1].message
    assert "row 2's 'image' has neither bytes nor a path" in parquet[2].message
    ints = list(unit_records(unit("parquet", tmp_path / "ints.parquet", "i")))
    assert [(item.key, item.stage, item.error_type) for item in ints] == [("i:0", "read", "WrongImageType"),
                                                                         ("i:1", "read", "WrongImageType")]
    assert "row 0's 'image' is int 1, not image bytes or a path" in ints[0].message


@pytest.mark.parametrize("column, accepted", [
    (pa.array([b"x"], pa.binary()), True), (pa.array([b"x"], pa.large_binary()), True),
    (pa.array(["a.jpg"], pa.string()), True), (pa.array(["a.jpg"], pa.large_string()), True),
    (pa.array([{"bytes": b"x", "path": None}], pa.struct([("bytes", pa.binary()), ("path", pa.string())])), True),
    (pa.array([{"path": "a.jpg"}], pa.struct([("path", pa.string())])), True),
    (pa.array([1], pa.int64()), False), (pa.array([[b"x"]], pa.list_(pa.binary())), False),
    (pa.array([{"bytes": 1}], pa.struct([("bytes", pa.int64())])), False),
    (pa.array([{"array": [1.0]}], pa.struct([("array", pa.list_(pa.float32()))])), False),
])
@pytest.mark.parametrize("layout", ["parquet", "arrow"])
def test_the_launcher_accepts_image_types_and_refuses_others_in_one_sentence(layout, column, accepted, tmp_path):
    shard = tmp_path / f"s.{layout}"
    table = pa.table({"label": [0], "image": column})
    if layout == "parquet":
        pq.write_table(table, shard)
    else:
        with pa.ipc.new_stream(str(shard), table.schema) as out:
            out.write_table(table)
    if accepted:
        check_record_fields(layout, str(shard), RecordFields())
        return
    with pytest.raises(ConfigError) as refused:
        check_record_fields(layout, str(shard), RecordFields())
    message, stored = str(refused.value), table.schema.field("image").type
    if layout == "parquet":  # as Parquet gives it back (a list's item is named `element` there)
        stored = pq.read_schema(shard).field("image").type
    assert message.startswith(f"column 'image' of {shard} is {stored}, not image bytes") and "\n" not in message
    assert message.endswith("name the image's column with --image-field")


def test_a_tfrecord_image_feature_of_numbers_is_an_error_row(tmp_path):
    write_tfrecord(tmp_path / "a.tfrecord", [example(image=[3, 4], key=b"k")])
    got = list(unit_records(unit("tfrecord", tmp_path / "a.tfrecord", "a.tfrecord")))
    assert as_tuples(got) == [("ErrorRecord", "k", "0", "WrongImageType")]
    assert "record 0's 'image' holds int64 values, not image bytes" in got[0].message


def test_tfds_shards_read_by_their_own_names_and_feature_names(tfds_numbered, tmp_path):
    import gzip

    version, images = tfds_numbered
    shard = version / "featurize_tiny-train.tfrecord-00000-of-00001"
    assert shard.exists()
    layout, units = shard_units(f"{version}/featurize_tiny-train.tfrecord-*")
    got = {item.key: item.data for item in unit_records(units[0])}
    assert layout == "tfrecord" and got == dict(images[:40])  # keyed by image/filename
    assert sorted(scan_unit_keys(units[0])) == sorted(got)
    first = next(iter(got))
    assert read_uri(f"{shard}#{scan_unit_keys(units[0]).index(first)}") == got[first]
    # the version folder is every split's shards; a gzipped copy keeps TFDS's name and adds .gz
    assert [posixpath.basename(u.source) for u in shard_units(str(version))[1]] == [
        "featurize_tiny-test.tfrecord-00000-of-00001", "featurize_tiny-train.tfrecord-00000-of-00001"]
    packed = tmp_path / "featurize_tiny-train.tfrecord-00000-of-00001.gz"
    packed.write_bytes(gzip.compress(shard.read_bytes()))
    layout, units = shard_units(str(packed))
    assert layout == "tfrecord" and {item.key: item.data for item in unit_records(units[0])} == got
