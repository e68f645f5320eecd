"""pipeline.inputs.layouts: the one table of input kinds. Every suffix of a row names that row's layout
and no other; TFDS's numbered names; the views the rest of featurize reads; where a row's uri ends its shard."""
import pytest

from pipeline.inputs.layouts import (DATASET_FOLDERS, LAYOUT_NAMES, LAYOUTS, RECORD_LAYOUTS, SHARD_SUFFIXES,
                                     UNIT_LAYOUTS, input_layout, split_shard_uri)

SUFFIXES = [(row.name, suffix) for row in LAYOUTS.values() for suffix in row.suffixes]


@pytest.mark.parametrize("layout, suffix", SUFFIXES)
def test_every_suffix_of_the_table_names_its_layout(layout, suffix):
    for path in (f"data/train-00000{suffix}", f"gs://b/x{suffix.upper()}", f"shards/*{suffix}"):
        assert input_layout(path) == layout
    assert [row.name for row in LAYOUTS.values() if row.names(f"a{suffix}")] == [layout]  # no other row claims it


def test_a_name_no_row_claims_is_image_files():
    assert LAYOUTS["files"].suffixes == () and input_layout("photos/cat.jpg") == input_layout("photos/") == "files"


@pytest.mark.parametrize("path, layout", [
    ("tfds/mnist/3.0.1/mnist-train.tfrecord-00000-of-00001", "tfrecord"),  # TensorFlow Datasets' own names
    ("mnist-train.tfrecord-00003-of-00016.gz", "tfrecord"), ("mnist-train.tfrecord-*", "tfrecord"),
    ("mnist-train.tfrecord-*-of-00016", "tfrecord"), ("a.TFRecords-0000[0-3]-of-00004", "tfrecord"),
    ("hub/data/train-00000-of-00002.parquet", "parquet"),                   # Hugging Face Hub shards
    ("saved/data-00000-of-00001.arrow", "arrow"), ("saved/*/data-*.arrow", "arrow"),
    ("notes.tfrecord-info.txt", "list"), ("photo.tfrecord-1.jpg", "files"), ("photos/", "files"),
])
def test_shard_layouts_by_name(path, layout):
    assert input_layout(path) == layout


def test_the_views_follow_the_table():
    assert UNIT_LAYOUTS == ("files", "tar", "tfrecord", "parquet", "arrow")  # what a unit id may start with
    assert RECORD_LAYOUTS == ("tfrecord", "parquet", "arrow")
    assert sorted(SHARD_SUFFIXES) == ["arrow", "parquet", "tar", "tfrecord"]
    assert LAYOUT_NAMES == {"files": "image files", "list": "path lists", "tar": "tar shards",
                            "tfrecord": "TFRecord shards", "parquet": "Parquet shards", "arrow": "Arrow shards"}
    assert LAYOUTS["list"].unit_layout == "files" and LAYOUTS["tar"].unit_layout == "tar"
    assert sorted(DATASET_FOLDERS) == [("dataset_dict.json", "*/data-*.arrow"), ("features.json", "*.tfrecord-*"),
                                       ("state.json", "data-*.arrow")]
    for marker, shards in DATASET_FOLDERS:  # a dataset folder's shards are a layout of the table
        assert LAYOUTS[input_layout(shards)].shard


@pytest.mark.parametrize("uri, inside", [
    ("/d/s.tar#a.jpg", ("tar", "/d/s.tar", "a.jpg")),
    ("/d/odd#dir/s.tgz#b#1.jpg", ("tar", "/d/odd#dir/s.tgz", "b#1.jpg")),  # the first # after a shard's name
    ("gs://b/s.TAR.GZ#x/y.png", ("tar", "gs://b/s.TAR.GZ", "x/y.png")),
    ("/d/a.tfrecords.gz#3", ("tfrecord", "/d/a.tfrecords.gz", "3")),
    ("/d/mnist-train.tfrecord-00000-of-00001#7", ("tfrecord", "/d/mnist-train.tfrecord-00000-of-00001", "7")),
    ("/d/p.parquet#0", ("parquet", "/d/p.parquet", "0")), ("/d/data-00000-of-00001.arrow#12",
                                                           ("arrow", "/d/data-00000-of-00001.arrow", "12")),
    ("/d/odd#dir/plain.jpg", None), ("/d/s.tar#", None), ("/d/list.txt#1", None), ("https://x/a.jpg#frag", None),
])
def test_a_row_uri_names_its_shard_up_to_the_first_hash_after_the_shard_s_name(uri, inside):
    assert split_shard_uri(uri) == inside
