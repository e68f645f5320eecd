"""Inputs: resolve --input, list what it holds, and read the records of one work unit.

Keys follow docs/design.md: plain files are keyed by their path relative to the input
root (the common prefix of every folder or glob given, so `{cats,dogs}` keys
`cats/001.jpg` and `dogs/001.jpg`); tar members by their WebDataset sample key (member
path up to the first dot of its base name), with one image member per sample.
The readers are plain generators: the unit stage (`pipeline.transforms`) and the
`ReadImages` transform both drive them.
"""
from __future__ import annotations

import errno
import logging
import lzma
import os
import posixpath
import re
import tarfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.images import SNIFF_BYTES, extension_of, is_image_name, sniff_image_format
from pipeline.records import ErrorRecord, ImageRecord, error_from_exception, relative_path

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
        return os.path.isfile(path)
    found = FileSystems.match([path])[0].metadata_list
    if not (len(found) == 1 and found[0].path == path):
        return False
    # Filesystems with real folders (HDFS) match a folder by its own name: a file has nothing below it.
    return not FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list


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
    # never two `001.jpg`; a file matched by two patterns is listed once.
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




# What a broken, truncated or missing shard raises while it is streamed. A transient OSError
# among them (is_transient) is not data: it is retried, then fails the bundle. Anything else
# (a bug, MemoryError) fails the bundle too, so Beam retries it.
TAR_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT,
                               errno.EAGAIN, errno.EPIPE, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                               errno.EIO})
_TRANSIENT_TEXT = re.compile(r"\b(5\d\d|429)\b|timed? ?out|temporar|connection (reset|aborted|refused)"
                             r"|service unavailable|too many requests|broken pipe", re.IGNORECASE)
READ_ATTEMPTS = 5  # backoff 0.5, 1, 2, 4 s: rides out a short object-store hiccup
RETRY_BACKOFF_S = 0.5
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A failure worth trying again (connection reset, timeout, 5xx/429 from an object store, EIO),
    never a reason to record an input as unreadable."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    # Object-store clients wrap HTTP failures in their own types (BeamIOError, HttpError, ...).
    return bool(_TRANSIENT_TEXT.search(f"{type(exc).__name__}: {exc}"))


def retry_transient(work: Callable[[], T], what: str, attempts: int | None = None) -> T:
    """`work()`, tried again with exponential backoff while it fails transiently; the last failure raises."""
    attempts = attempts or READ_ATTEMPTS
    for attempt in range(attempts):
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - only transient failures are retried; the rest re-raise
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            logging.getLogger(__name__).warning("featurize: %s failed (%s: %s); retry %d of %d",
                                                what, type(exc).__name__, exc, attempt + 1, attempts - 1)
            time.sleep(RETRY_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def normalized_path(path: str) -> str:
    """One spelling per file: local paths absolute and normalised (`./a/../b` and `/x/b`), URIs as given."""
    return os.path.normpath(os.path.abspath(path)) if path and FileSystems.get_scheme(path) is None else path.rstrip("/")


def file_key(path: str, root: str) -> str:
    """The key of a plain file: its path below `root`; with no common root (`{cats,dogs}`,
    `{/data/a,/mnt/b}`) the whole path, without a leading slash, so keys stay distinct."""
    if root:
        return relative_path(path, root)
    return path.lstrip("/") if FileSystems.get_scheme(path) is None else path


@dataclass
class Listing:
    """What an input spec holds, sorted: images (files) or shards (tar), and the files not read."""
    layout: str
    root: str
    inputs: list[tuple[str, str, int]] = field(default_factory=list)  # (key, uri, bytes); tar: key = uri
    duplicates: list[ErrorRecord] = field(default_factory=list)  # files whose key another file has
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, extension) of files not read
    missing: list[str] = field(default_factory=list)  # literal paths (a brace range) that do not exist

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.inputs)

    def skipped_by_extension(self) -> dict[str, int]:
        return dict(sorted(Counter(ext or "(none)" for _, ext in self.skipped).items()))


def _match(pattern: str) -> list[tuple[str, int]]:
    """(path, bytes) of every match; a literal path that does not exist gives (path, -1)."""
    if not has_glob(pattern) and not pattern.endswith("/**"):
        found = FileSystems.match([pattern])[0].metadata_list if FileSystems.exists(pattern) else []
        return [(m.path, m.size_in_bytes) for m in found] or [(pattern, -1)]
    return [(m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list]


def _sniffs_as_image(path: str) -> bool:
    try:
        with _open_raw(path) as handle:
            return sniff_image_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:  # unreadable now: list it as an image so the read stage reports it as an error row
        return True


def list_inputs(spec: InputSpec) -> Listing:
    """List every input of `spec` (on the launcher: units, totals and resume need the whole list).

    Files without an image extension are `skipped`, except files without any extension,
    which are read when their first bytes are an image's. A path matched by two patterns
    is listed once; two paths with one key (possible only without a common root) keep the
    smallest path and make the others `DuplicateKey` error rows.
    """
    root = spec.patterns[0][1] if spec.patterns else ""
    listing = Listing(spec.layout, root)
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
    if spec.layout == "tar":
        listing.inputs = [(path, path, size) for path, size in sorted(found.items())]
        return listing
    by_key: dict[str, tuple[str, int]] = {}
    for path, size in sorted(found.items()):
        key, extension = file_key(path, root), extension_of(path)
        if not (is_image_name(path) or (not extension and _sniffs_as_image(path))):
            listing.skipped.append((key, extension))
        elif key in by_key:
            listing.duplicates.append(ErrorRecord(key, path, "read", "DuplicateKey",
                                                  f"key {key!r} also comes from {by_key[key][0]}; kept that one"))
        else:
            by_key[key] = (path, size)
    listing.inputs = [(key, path, size) for key, (path, size) in sorted(by_key.items())]
    return listing


def read_file_records(members: Iterable[tuple[str, str]]) -> Iterator[ImageRecord | ErrorRecord]:
    """(key, uri) -> the file's bytes as an ImageRecord, or a read ErrorRecord when it cannot be read
    (missing, permissions, a directory); a transient failure raises (the unit is retried)."""
    for key, uri in members:
        try:
            with _open_raw(uri) as handle:
                data = handle.read()
        except OSError as exc:
            if is_transient(exc):
                raise
            yield error_from_exception(key, uri, "read", exc)
            continue
        yield ImageRecord(key, uri, data)


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


class ScanMismatch(RuntimeError):
    """Reading a shard found image members its key scan did not see: duplicates could slip through."""


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


def unit_records(unit, losers: Mapping[int, str] | None = None,
                 scanned: int | None = None) -> Iterator[ImageRecord | ErrorRecord]:
    """Every input of a WorkUnit, in a fixed order: its planning rejects, then its records."""
    yield from unit.rejected
    if unit.layout == "tar":
        yield from read_tar_records(unit.source, losers, scanned)
    else:
        yield from read_file_records(unit.members)
