"""ReadImages: an input spec (folder, glob, WebDataset tar shards) -> ImageRecords.

Listing happens on the workers (a folder of millions of files never passes through
the launcher) and is followed by a reshuffle so reading is spread across workers.
Keys follow docs/design.md: plain files are keyed by their path relative to the input
root; tar members by their WebDataset sample key (member path up to the first dot of
its base name), with one image member per sample.
"""
from __future__ import annotations

import posixpath
import re
import tarfile
import time
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.images import is_image_name
from pipeline.records import METRICS_NAMESPACE, ErrorRecord, ImageRecord, error_from_exception, relative_path

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass(frozen=True)
class InputSpec:
    """A resolved --input: its layout and (pattern, root) pairs to list."""
    layout: str  # "files" | "tar"
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


def is_tar_path(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def has_glob(path: str) -> bool:
    return _GLOB_CHARS.search(path) is not None


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard: keys are relative to it."""
    first = _GLOB_CHARS.search(pattern).start()
    return pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else ""


def _is_single_file(path: str) -> bool:
    if FileSystems.get_scheme(path) is None:  # local: a directory must stay a directory
        import os
        return os.path.isfile(path)
    found = FileSystems.match([path])[0].metadata_list
    return len(found) == 1 and found[0].path == path


def resolve_input(spec: str) -> InputSpec:
    """Turn --input into patterns to list. Raises ValueError for a mix of layouts."""
    expanded = expand_braces(spec)
    tars = [is_tar_path(p) for p in expanded]
    if any(tars) and not all(tars):
        raise ValueError(f"input {spec!r} mixes tar shards and plain files; give one layout per run")
    if all(tars):
        return InputSpec("tar", tuple((p, "") for p in expanded))
    pairs = []
    for pattern in expanded:
        if has_glob(pattern):
            pairs.append((pattern, _glob_root(pattern)))
        elif _is_single_file(pattern):
            pairs.append((pattern, posixpath.dirname(pattern)))
        else:  # a folder, listed recursively
            root = pattern.rstrip("/")
            pairs.append((root + "/**", root))
    # One root for every pattern: `photos/{cats,dogs}` keys `cats/001.jpg` and `dogs/001.jpg`,
    # never two `001.jpg`; and a file matched by two patterns gets one key (Distinct drops it).
    root = _common_root([r for _, r in pairs])
    return InputSpec("files", tuple((pattern, root) for pattern, _ in pairs))


def _common_root(roots: list[str]) -> str:
    """The longest shared leading path components (plain string split: keeps `gs://` intact)."""
    parts = [r.rstrip("/").split("/") for r in roots]
    common = []
    for level in zip(*parts):
        if any(part != level[0] for part in level):
            break
        common.append(level[0])
    return "/".join(common)


def count_matches(spec: InputSpec, limit: int = 1) -> int:
    """How many inputs the spec finds, looking no further than `limit` (for validation)."""
    found = 0
    for pattern, _ in spec.patterns:
        if not has_glob(pattern) and not pattern.endswith("/**"):
            found += int(FileSystems.exists(pattern))
        else:  # a bounded look: the full listing is the workers' job
            metadata = FileSystems.match([pattern], limits=[max(limit, 10_000)])[0].metadata_list
            found += sum(1 for m in metadata if spec.layout == "tar" or is_image_name(m.path))
        if found >= limit:
            break
    return found


def webdataset_key(member_name: str) -> str:
    """`dir/a.b.jpg` -> `dir/a`: WebDataset cuts the sample key at the first dot of the base name."""
    name = member_name[2:] if member_name.startswith("./") else member_name
    directory, base = posixpath.split(name)
    stem = base.split(".", 1)[0]
    return posixpath.join(directory, stem) if directory else stem


def member_uri(shard: str, member_name: str) -> str:
    return f"{shard}#{member_name}"


_MEMBER_URI = re.compile(r"^(.*?\.(?:tar|tar\.gz|tgz))#(.+)$", re.IGNORECASE)


def read_uri(uri: str) -> bytes:
    """The bytes behind a row's uri: a file, or `shard.tar#member` (found by scanning the shard)."""
    match = _MEMBER_URI.match(uri)
    if match is None:
        with _open_raw(uri) as handle:
            return handle.read()
    shard, member = match.groups()
    with _open_raw(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
        for info in archive:
            if info.name == member:
                return archive.extractfile(info).read()
    raise FileNotFoundError(f"{member!r} is not in {shard}")


def _open_raw(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _image_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for info in archive:
        if info.isfile() and is_image_name(info.name):
            yield info


class _ListInputs(beam.DoFn):
    """(pattern, root) -> (root, path) for every matching input; literal paths pass as they are."""

    def __init__(self, layout: str):
        self._layout = layout

    def process(self, pattern_root):
        pattern, root = pattern_root
        if not has_glob(pattern) and not pattern.endswith("/**"):
            # A missing literal shard becomes a read error row, not a silent gap.
            yield root, pattern
            return
        for metadata in FileSystems.match([pattern])[0].metadata_list:
            if self._layout == "tar" or is_image_name(metadata.path):
                yield root, metadata.path


class _Reader(beam.DoFn):
    """Read-stage metrics shared by the readers: inputs seen, bytes, read errors, time reading."""

    def __init__(self):
        self._inputs = Metrics.counter(METRICS_NAMESPACE, "inputs")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "bytes_read")
        self._read_errors = Metrics.counter(METRICS_NAMESPACE, "read_errors")
        self._read_ms = Metrics.counter(METRICS_NAMESPACE, "read_ms")
        self._bundle_ms = 0.0

    def finish_bundle(self):
        # Summed per bundle: a millisecond counter bumped per file would round small files to 0.
        self._read_ms.inc(int(round(self._bundle_ms)))
        self._bundle_ms = 0.0


class _ReadFiles(_Reader):
    """(root, path) -> ImageRecord keyed by the path relative to root; failures -> 'errors'."""


    def process(self, root_path):
        root, path = root_path
        key = relative_path(path, root)
        self._inputs.inc()
        started = time.perf_counter()
        try:
            with _open_raw(path) as handle:
                data = handle.read()
        except Exception as exc:  # an unreadable file is one error row, never a failed job
            self._read_errors.inc()
            yield beam.pvalue.TaggedOutput("errors", error_from_exception(key, path, "read", exc))
            return
        finally:
            self._bundle_ms += (time.perf_counter() - started) * 1000
        self._bytes.inc(len(data))
        yield ImageRecord(key, path, data)


class _ScanTarKeys(beam.DoFn):
    """shard -> (sample key, member uri) for every image member, reading headers only where it can."""

    def process(self, root_shard):
        _, shard = root_shard
        try:
            with _open_raw(shard) as handle:
                # Plain tars are scanned by seeking over member data; compressed ones must stream.
                mode = "r|*" if shard.lower().endswith((".gz", ".tgz")) else "r:"
                with tarfile.open(fileobj=handle, mode=mode) as archive:
                    for info in _image_members(archive):
                        yield webdataset_key(info.name), member_uri(shard, info.name)
        except Exception:  # noqa: BLE001 - the reading pass reports broken shards as error rows
            return


class _ReadTarShards(_Reader):
    """shard -> one ImageRecord per sample image, streamed member by member (never extracted).

    `winners` maps each duplicated sample key to the one uri allowed to keep it; every
    other member with that key (and a repeat of the winning member itself) becomes a
    duplicate-key error row.
    """


    def process(self, root_shard, winners):
        _, shard = root_shard
        shard_key = posixpath.basename(shard)
        kept: set[str] = set()  # winning uris already emitted from this shard
        current = None
        try:
            with _open_raw(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
                for info in _image_members(archive):
                    key, uri = webdataset_key(info.name), member_uri(shard, info.name)
                    current = (key, uri)
                    self._inputs.inc()
                    winner = winners.get(key)
                    if winner is not None:
                        if winner != uri or uri in kept:
                            self._read_errors.inc()
                            yield beam.pvalue.TaggedOutput("errors", ErrorRecord(
                                key, uri, "read", "DuplicateKey",
                                f"sample key {key!r} also comes from {winner}; kept that one"))
                            current = None
                            continue
                        kept.add(uri)
                    started = time.perf_counter()
                    data = archive.extractfile(info).read()
                    # Timed here only: downstream stages run while this generator is suspended.
                    self._bundle_ms += (time.perf_counter() - started) * 1000
                    current = None
                    self._bytes.inc(len(data))
                    yield ImageRecord(key, uri, data)
        except Exception as exc:  # a broken shard or member is one error row; the rest was kept
            if current is None:  # failed between members (or before the first): blame the shard
                self._inputs.inc()
                current = (shard_key, shard)
            self._read_errors.inc()
            yield beam.pvalue.TaggedOutput("errors", error_from_exception(*current, "read", exc))


def _duplicate_winner(key_uris):
    """(key, uris) -> (key, the uri that keeps it), only for keys seen more than once
    (a member name repeated inside one tar counts twice: tar allows it)."""
    key, uris = key_uris
    uris = sorted(uris)
    if len(uris) > 1:
        yield key, uris[0]


class ReadImages(beam.PTransform):
    """Read every image of an input spec as `ImageRecord`s.

    Input: a pipeline root. Output: a dict with `images` (ImageRecord) and `errors`
    (ErrorRecord, stage "read"). Accepts a folder (recursive), a glob of image files,
    or WebDataset tar shards (glob or brace range), on any Beam filesystem.
    """

    def __init__(self, input_spec: str | InputSpec):
        super().__init__()
        self._spec = input_spec if isinstance(input_spec, InputSpec) else resolve_input(input_spec)

    def expand(self, pbegin):
        listed = (
            pbegin
            | "Patterns" >> beam.Create(list(self._spec.patterns))
            | "List" >> beam.ParDo(_ListInputs(self._spec.layout))
            # One match emits every path from one worker: spread them before reading
            # (a shuffle, which also drops a path listed twice by overlapping patterns).
            | "Spread" >> beam.Distinct()
        )
        if self._spec.layout == "files":
            read = listed | "ReadFiles" >> beam.ParDo(_ReadFiles()).with_outputs("errors", main="images")
        else:
            winners = (
                listed
                | "ScanKeys" >> beam.ParDo(_ScanTarKeys())
                | "GroupKeys" >> beam.GroupByKey()
                | "Duplicates" >> beam.FlatMap(_duplicate_winner)
            )
            read = listed | "ReadShards" >> beam.ParDo(
                _ReadTarShards(), winners=beam.pvalue.AsDict(winners)).with_outputs("errors", main="images")
        return {"images": read.images, "errors": read.errors}
