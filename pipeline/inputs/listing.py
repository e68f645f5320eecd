"""Inputs: resolve --input, list what it holds, and read the records of one work unit.

Layouts: plain image files (folders, globs, or the paths a `.txt`/`.csv`/`.tsv` list names),
and shards, each one work unit: WebDataset tars, TFRecord files (TensorFlow Datasets' numbered
ones too), Parquet files, Arrow IPC files (a Hugging Face `save_to_disk` folder is its shards).
Keys follow docs/design.md: plain files are keyed by their path relative to the input
root (the common prefix of every folder or glob given, so `{cats,dogs}` keys
`cats/001.jpg` and `dogs/001.jpg`); tar members by their WebDataset sample key (member
path up to the first dot of its base name), with one image member per sample; TFRecord,
Parquet and Arrow records by their key field, else `SHARD:INDEX` (`pipeline.inputs.record_shards`).
The readers are plain generators: the unit stage (`pipeline.transforms`) and the
`ReadImages` transform both drive them.
"""
from __future__ import annotations

import http.client
import lzma
import os
import posixpath
import re
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import files

from pipeline.inputs import record_shards
from pipeline.images import SNIFF_BYTES, extension_of, is_image_name, sniff_image_format
from pipeline.inputs.path_lists import is_path_list, read_path_list
from pipeline.elements import (ErrorRecord, ImageRecord, RecordFields, ScanMismatch, WorkUnit, error_from_exception,
                              relative_path)
from pipeline.inputs.retries import is_transient, retry_transient

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Shard layouts by file name; every shard is one work unit.
SHARD_SUFFIXES = {"tar": TAR_SUFFIXES, "tfrecord": record_shards.TFRECORD_SUFFIXES,
                  "parquet": record_shards.PARQUET_SUFFIXES, "arrow": record_shards.ARROW_SUFFIXES}
# Shard names that carry a number after the suffix (TensorFlow Datasets').
SHARD_NAMES = {"tfrecord": record_shards.TFDS_SHARD_NAME}
# Folders a dataset library saves, known by a file in them, and the glob of their shards:
# Hugging Face `Dataset.save_to_disk` (state.json), `DatasetDict.save_to_disk` (a folder per split),
# a TensorFlow Datasets version folder (features.json). Their keys then start below the folder.
DATASET_FOLDERS = (("state.json", "data-*.arrow"), ("dataset_dict.json", "*/data-*.arrow"),
                   ("features.json", "*.tfrecord-*"))
HTTP_TIMEOUT_S = 60
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass(frozen=True)
class InputSpec:
    """A resolved --input: its layout and (pattern, root) pairs to list."""
    layout: str  # "files" | "list" | "tar" | "tfrecord" | "parquet" | "arrow"
    patterns: tuple[tuple[str, str], ...]


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: `{000000..000127}` (zero padding kept) and `{a,b}`."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numeric = _RANGE.match(body)
    if numeric:
        lo_text, hi_text = numeric.groups()
        lo, hi = int(lo_text), int(hi_text)
        width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:  # a literal brace, not an expansion
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def has_glob(path: str) -> bool:
    return _GLOB_CHARS.search(path) is not None


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard: keys are relative to it."""
    first = _GLOB_CHARS.search(pattern).start()
    return pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else ""


def _is_single_file(path: str) -> bool:
    if files.is_local(path):  # local: a directory must stay a directory
        return os.path.isfile(path)
    found = FileSystems.match([path])[0].metadata_list
    if not (len(found) == 1 and found[0].path == path):
        return False
    # Filesystems with real folders (HDFS) match a folder by its own name: a file has nothing below it.
    return not FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list


def input_layout(path: str) -> str:
    """What a path or pattern names, by its suffix: a shard format, a path "list", or image "files"."""
    lowered = path.lower()
    for layout, suffixes in SHARD_SUFFIXES.items():
        if lowered.endswith(suffixes) or (layout in SHARD_NAMES and SHARD_NAMES[layout].search(path)):
            return layout
    return "list" if is_path_list(path) else "files"


LAYOUT_NAMES = {"tar": "tar shards", "tfrecord": "TFRecord shards", "parquet": "Parquet shards",
                "arrow": "Arrow shards", "list": "path lists", "files": "image files"}


def _dataset_folder_shards(path: str) -> str:
    """A folder a dataset library saved -> the glob of its shards; any other path as given."""
    if has_glob(path) or input_layout(path) != "files":
        return path
    folder = path.rstrip("/")
    for marker, shards in DATASET_FOLDERS:
        if FileSystems.exists(f"{folder}/{marker}"):
            return f"{folder}/{shards}"
    return path


def resolve_input(spec: str) -> InputSpec:
    """Turn --input into patterns to list. Raises ValueError for a mix of layouts.

    Local paths become absolute, so each row's uri names its image from any folder (`featurize
    serve` and `search --grid` read it later) and on workers whose folder is not the launcher's."""
    expanded = [_dataset_folder_shards(os.path.abspath(p) if files.is_local(p) else p) for p in expand_braces(spec)]
    layouts = sorted({input_layout(p) for p in expanded})
    if len(layouts) > 1:
        raise ValueError(f"input {spec!r} mixes {' and '.join(LAYOUT_NAMES[name] for name in layouts)}; "
                         f"give one layout per run")
    layout = layouts[0]
    if layout == "tar":  # tar keys are sample keys: no key root
        return InputSpec("tar", tuple((p, "") for p in expanded))
    pairs = []
    for pattern in expanded:
        if has_glob(pattern):
            pairs.append((pattern, _glob_root(pattern)))
        elif layout != "files" or _is_single_file(pattern):
            pairs.append((pattern, posixpath.dirname(pattern)))
        else:  # a folder, listed recursively
            root = pattern.rstrip("/")
            pairs.append((root + "/**", root))
    # One root for every pattern: `photos/{cats,dogs}` keys `cats/001.jpg` and `dogs/001.jpg`,
    # never two `001.jpg`; a file matched by two patterns is listed once.
    root = _common_root([r for _, r in pairs])
    return InputSpec(layout, tuple((pattern, root) for pattern, _ in pairs))


def _common_root(roots: list[str]) -> str:
    """The longest shared leading path components (plain string split: keeps `gs://` intact)."""
    parts = [r.rstrip("/").split("/") for r in roots]
    common = []
    for level in zip(*parts):
        if any(part != level[0] for part in level):
            break
        common.append(level[0])
    return "/".join(common)


def webdataset_key(member_name: str) -> str:
    """`dir/a.b.jpg` -> `dir/a`: WebDataset cuts the sample key at the first dot of the base name."""
    name = member_name[2:] if member_name.startswith("./") else member_name
    directory, base = posixpath.split(name)
    stem = base.split(".", 1)[0]
    return posixpath.join(directory, stem) if directory else stem


def member_uri(shard: str, member_name: str) -> str:
    return f"{shard}#{member_name}"


_SHARD_URI = re.compile(r"^(.*?\.(?:tar|tar\.gz|tgz|tfrecords?|tfrecords?\.gz|tfrecords?-\d+-of-\d+(?:\.gz)?"
                        r"|parquet|arrow))#(.+)$", re.IGNORECASE)


def read_uri(uri: str, fields: RecordFields = RecordFields()) -> bytes:
    """The bytes behind a row's uri: a file, `shard.tar#member` (found by scanning the shard), or
    `shard.tfrecord#INDEX` / `shard.parquet#INDEX` / `shard.arrow#INDEX` (the image of that record)."""
    match = _SHARD_URI.match(uri)
    if match is None:
        return _read_bytes(uri)
    shard, member = match.groups()
    layout = input_layout(shard)
    if layout != "tar":
        if not member.isdigit():
            raise FileNotFoundError(f"{uri!r} does not name a record: {shard}#INDEX expected")
        return record_shards.read_record_image(layout, shard, int(member), fields)
    with _open_raw(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
        for info in archive:
            if info.name == member:
                return archive.extractfile(info).read()
    raise FileNotFoundError(f"{member!r} is not in {shard}")


def _open_raw(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _read_bytes(uri: str) -> bytes:
    """A file's bytes through Beam's filesystems, or an http(s) URL's body (Beam has no http filesystem)."""
    if _is_http(uri):
        request = urllib.request.Request(uri, headers={"User-Agent": "featurize"})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.read()
    with _open_raw(uri) as handle:
        return handle.read()


# What a broken, truncated or missing shard raises while it is streamed. A transient OSError
# among them (is_transient) is not data: it is retried, then fails the bundle. Anything else
# (a bug, MemoryError) fails the bundle too, so Beam retries it.
TAR_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
URI_READ_ERRORS = (*TAR_READ_ERRORS, *record_shards.RECORD_READ_ERRORS)  # what read_uri raises for a bad uri


def normalized_path(path: str) -> str:
    """One spelling per file: local paths absolute and normalised (`./a/../b` and `/x/b`), URIs as given."""
    if path and files.is_local(path) and not _is_http(path):
        return os.path.normpath(os.path.abspath(path))
    return path.rstrip("/")


def file_key(path: str, root: str) -> str:
    """The key of a plain file: its path below `root`; with no common root (`{cats,dogs}`,
    `{/data/a,/mnt/b}`) the whole path, without a leading slash, so keys stay distinct."""
    if root:
        return relative_path(path, root)
    return path.lstrip("/") if files.is_local(path) and not _is_http(path) else path


@dataclass
class Listing:
    """What an input spec holds, sorted: images (files) or shards (tar), and the files not read."""
    layout: str
    root: str
    inputs: list[tuple[str, str, int]] = field(default_factory=list)  # (key, uri, bytes); tar: key = uri
    duplicates: list[ErrorRecord] = field(default_factory=list)  # files whose key another file has
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, extension) of files not read
    missing: list[str] = field(default_factory=list)  # literal paths (a brace range) that do not exist
    sized: bool = True  # False for a path list: its files are not statted

    @property
    def bytes(self) -> int | None:
        return sum(size for _, _, size in self.inputs) if self.sized else None

    def skipped_by_extension(self) -> dict[str, int]:
        return dict(sorted(Counter(ext or "(none)" for _, ext in self.skipped).items()))


def _match(pattern: str) -> list[tuple[str, int]]:
    """(path, bytes) of every match; a literal path that does not exist gives (path, -1)."""
    if not has_glob(pattern) and not pattern.endswith("/**"):
        found = FileSystems.match([pattern])[0].metadata_list if FileSystems.exists(pattern) else []
    else:
        found = FileSystems.match([pattern])[0].metadata_list
    paths = [(m.path, m.size_in_bytes) for m in found]
    return paths or ([] if has_glob(pattern) or pattern.endswith("/**") else [(pattern, -1)])


def _sniffs_as_image(path: str) -> bool:
    try:
        with _open_raw(path) as handle:
            return sniff_image_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:  # unreadable now: list it as an image so the read stage reports it as an error row
        return True


def _listed_paths(lists: list[str], uri_column: str | None) -> tuple[str, list[str]]:
    """The key root and every path the lists name, repeats included (sizes are not looked up: a
    list of a million object-store paths would cost a million requests)."""
    missing = [path for path in lists if not FileSystems.exists(path)]
    if missing:
        raise ValueError(f"input list {missing[0]!r} does not exist; give the path of a .txt, .csv or .tsv list")
    paths = [path for listed in lists for path in read_path_list(listed, uri_column)]
    if not paths:
        raise ValueError(f"input {', '.join(lists)} names no paths; a list has one path or URL per row")
    return _common_root([posixpath.dirname(path) for path in paths]), paths


def list_inputs(spec: InputSpec, uri_column: str | None = None) -> Listing:
    """List every input of `spec` (on the launcher: units, totals and resume need the whole list).

    Files without an image extension are `skipped`, except files without any extension,
    which are read when their first bytes are an image's (a path list's entries are all read:
    the list names them). A path matched by two patterns is listed once; two paths with one
    key (possible only without a common root, or a path listed twice) keep the smallest path
    and make the others `DuplicateKey` error rows.
    """
    root = spec.patterns[0][1] if spec.patterns else ""
    listing = Listing("files" if spec.layout == "list" else spec.layout, root)
    found: dict[str, int] = {}
    spellings: set[str] = set()
    for pattern, _ in spec.patterns:
        for path, size in sorted(_match(pattern)):
            spelling = normalized_path(path)
            if spelling not in spellings:  # `shards/a.tar` and `/data/shards/a.tar`: one input
                spellings.add(spelling)
                found[path] = size
    # A missing literal shard stays in the listing: it becomes a read error row, not a silent gap.
    listing.missing = sorted(path for path, size in found.items() if size < 0)
    found = {path: max(size, 0) for path, size in found.items()}
    if spec.layout in SHARD_SUFFIXES:
        listing.inputs = [(path, path, size) for path, size in sorted(found.items())]
        return listing
    named = list(found.items())
    if spec.layout == "list":
        root, paths = _listed_paths(sorted(found), uri_column)
        listing.root, listing.sized, named = root, False, [(path, 0) for path in paths]
    by_key: dict[str, tuple[str, int]] = {}
    for path, size in sorted(named):
        key, extension = file_key(path, root), extension_of(path)
        if spec.layout == "files" and not (is_image_name(path) or (not extension and _sniffs_as_image(path))):
            listing.skipped.append((key, extension))
        elif key in by_key:
            listing.duplicates.append(ErrorRecord(key, path, "read", "DuplicateKey",
                                                  f"key {key!r} also comes from {by_key[key][0]}; kept that one"))
        else:
            by_key[key] = (path, size)
    listing.inputs = [(key, path, size) for key, (path, size) in sorted(by_key.items())]
    return listing


def read_member(key: str, uri: str) -> ImageRecord | ErrorRecord:
    """One listed file. An http(s) URL that keeps failing transiently becomes an error row (its
    unit is marked for --resume to retry): one dead web server must not stop the run."""
    try:
        if _is_http(uri):
            return ImageRecord(key, uri, retry_transient(lambda: _read_bytes(uri), f"download of {uri}"))
        return ImageRecord(key, uri, _read_bytes(uri))
    except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors too
        if is_transient(exc) and not _is_http(uri):
            raise
        return error_from_exception(key, uri, "read", exc)


def read_file_records(members: Iterable[tuple[str, str]]) -> Iterator[ImageRecord | ErrorRecord]:
    """(key, uri) -> the file's bytes as an ImageRecord, or a read ErrorRecord when it cannot be read
    (missing, permissions, a directory, an http 404); a transient failure of a filesystem raises
    (the unit is retried)."""
    for key, uri in members:
        yield read_member(key, uri)


def _image_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for info in archive:
        if info.isfile() and is_image_name(info.name):
            yield info


def scan_tar_keys(shard: str) -> list[str]:
    """Sample keys of a shard's image members, in member order, reading headers only where it can.

    A shard that breaks (truncated, corrupt, missing) gives the keys before the break: the
    reading pass stops at the same place and reports the rest as an error row.
    """
    keys: list[str] = []
    try:
        with _open_raw(shard) as handle:
            # Plain tars are scanned by seeking over member data; compressed ones must stream.
            mode = "r:*"  # transparent compression, whatever the name says (the reader streams with r|*)
            with tarfile.open(fileobj=handle, mode=mode) as archive:
                for info in _image_members(archive):
                    keys.append(webdataset_key(info.name))
    except TAR_READ_ERRORS as exc:
        if is_transient(exc):
            raise
    return keys


def read_tar_records(shard: str, losers: Mapping[int, str] | None = None,
                     scanned: int | None = None) -> Iterator[ImageRecord | ErrorRecord]:
    """A shard's image members as ImageRecords, streamed (never extracted).

    `losers` maps the position of an image member (0, 1, ... in shard order) whose sample key
    belongs to another member to a description of that member: it becomes a DuplicateKey
    error row. `scanned` is how many image members the key scan saw: reading more raises
    ScanMismatch. A shard that breaks keeps every complete member before the break and makes
    one error row for the rest (keyed by the member it broke in, else by the shard); a
    transient failure raises (the unit is retried).
    """
    losers = losers or {}
    current: tuple[str, str] | None = None
    try:
        with _open_raw(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
            for position, info in enumerate(_image_members(archive)):
                key, uri = webdataset_key(info.name), member_uri(shard, info.name)
                if scanned is not None and position >= scanned:
                    raise ScanMismatch(f"{shard}: the key scan saw {scanned} image members, reading finds more; "
                                       f"the shard changed or the scan failed, so duplicate keys were not checked")
                if position in losers:
                    yield ErrorRecord(key, uri, "read", "DuplicateKey",
                                      f"sample key {key!r} also comes from {losers[position]}; kept that one")
                    continue
                current = (key, uri)
                data = archive.extractfile(info).read()
                current = None
                yield ImageRecord(key, uri, data)
    except TAR_READ_ERRORS as exc:
        if is_transient(exc):
            raise
        yield error_from_exception(*(current or (posixpath.basename(shard), shard)), "read", exc)


def scan_unit_keys(unit: WorkUnit) -> list[str]:
    """The keys of a shard unit's inputs, in reading order (for duplicate keys across shards)."""
    if unit.layout == "tar":
        return scan_tar_keys(unit.source)
    return record_shards.scan_record_keys(unit.layout, unit.source, unit.fields, unit.name)


def unit_records(unit: WorkUnit, losers: Mapping[int, str] | None = None,
                 scanned: int | None = None) -> Iterator[ImageRecord | ErrorRecord]:
    """Every input of a WorkUnit, in a fixed order: its planning rejects, then its records."""
    yield from unit.rejected
    if unit.layout == "files":
        yield from read_file_records(unit.members)
    elif unit.layout == "tar":
        yield from read_tar_records(unit.source, losers, scanned)
    else:
        yield from record_shards.read_record_shard(unit.layout, unit.source, unit.fields, unit.name, losers, scanned)
