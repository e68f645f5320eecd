"""The kinds of input --input can name: one row per layout, and what a path's name says about it.

Every other place that knows a layout reads it here: resolving and listing an input
(`pipeline.inputs.listing`), the reader of a unit (`pipeline.inputs.reading`), unit ids and the
journal's prefixes (`pipeline.job`), the launcher's messages and field checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """One kind of input: how a path names it and how it is cut into work units."""
    name: str  # in unit ids (`tar-...`), the manifest and the dry run's report
    words: str  # how a message names inputs of this layout
    suffixes: tuple[str, ...] = ()  # lower-case file-name endings of this layout
    numbered: re.Pattern[str] | None = None  # names with a shard number after the suffix (or a glob of them)
    shard: bool = False  # each file is one work unit, read by this layout's reader
    fields: bool = False  # records have named fields: --image-field and --key-field apply
    read_as: str = ""  # the layout of the files it names (a path list's entries are image files)
    # Folders a dataset library saves, known by a file in them: (marker, glob of the shards below).
    folders: tuple[tuple[str, str], ...] = ()

    @property
    def unit_layout(self) -> str:
        """The layout of this input's work units."""
        return self.read_as or self.name

    def names(self, path: str) -> bool:
        """Whether a path or pattern is of this layout by its name."""
        return path.lower().endswith(self.suffixes) or (self.numbered is not None and bool(self.numbered.search(path)))


LAYOUTS: dict[str, Layout] = {row.name: row for row in (
    Layout("files", "image files"),  # anything no other row names
    Layout("list", "path lists", (".txt", ".csv", ".tsv"), read_as="files"),
    Layout("tar", "tar shards", (".tar", ".tar.gz", ".tgz"), shard=True),
    # TensorFlow Datasets numbers its shards after the suffix (`mnist-train.tfrecord-00000-of-00001`); a
    # glob of them (`mnist-train.tfrecord-*`) names the same layout. A trailing `.gz` is gunzipped.
    Layout("tfrecord", "TFRecord shards", (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz"),
           numbered=re.compile(r"\.tfrecords?-[-0-9*?\[\]]+(of[-0-9*?\[\]]+)?(\.gz)?$", re.IGNORECASE),
           shard=True, fields=True, folders=(("features.json", "*.tfrecord-*"),)),  # a TFDS version folder
    Layout("parquet", "Parquet shards", (".parquet",), shard=True, fields=True),
    # Hugging Face `Dataset.save_to_disk` (state.json) and `DatasetDict.save_to_disk` (a folder per split).
    Layout("arrow", "Arrow shards", (".arrow",), shard=True, fields=True,
           folders=(("state.json", "data-*.arrow"), ("dataset_dict.json", "*/data-*.arrow"))),
)}

# Views of the table, for the code that needs only one column of it.
UNIT_LAYOUTS = tuple(row.name for row in LAYOUTS.values() if not row.read_as)  # every unit id starts `<layout>-`
SHARD_SUFFIXES = {row.name: row.suffixes for row in LAYOUTS.values() if row.shard}
RECORD_LAYOUTS = tuple(row.name for row in LAYOUTS.values() if row.fields)
LAYOUT_NAMES = {row.name: row.words for row in LAYOUTS.values()}
DATASET_FOLDERS = tuple(folder for row in LAYOUTS.values() for folder in row.folders)


def input_layout(path: str) -> str:
    """What a path or pattern names, by its suffix: a shard format, a path "list", or image "files"."""
    return next((row.name for row in LAYOUTS.values() if row.names(path)), "files")


def split_shard_uri(uri: str) -> tuple[str, str, str] | None:
    """A row's uri inside a shard -> (layout, shard, member): `shard.tar#member`, `shard.parquet#INDEX`.
    The shard ends at the first `#` after a shard's name (a folder may have a `#` in its name);
    None for the uri of a plain file."""
    cut = uri.find("#")
    while 0 <= cut < len(uri) - 1:
        layout = input_layout(uri[:cut])
        if LAYOUTS[layout].shard:
            return layout, uri[:cut], uri[cut + 1:]
        cut = uri.find("#", cut + 1)
    return None
