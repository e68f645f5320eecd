"""Listing: resolve --input, expand its braces, list what it holds, and key each file.

What a path names comes from the table of layouts (`pipeline.inputs.layouts`): plain image files
(folders, globs, or the paths a `.txt`/`.csv`/`.tsv` list names), or shards, each one work unit
(tar, TFRecord, Parquet, Arrow; a folder a dataset library saved is its shards). Keys follow
docs/design.md: plain files are keyed by their path relative to the input root (the common
prefix of every folder or glob given, so `{cats,dogs}` keys `cats/001.jpg` and `dogs/001.jpg`);
shards are listed whole, their records keyed by their readers (`pipeline.inputs.tar`,
`pipeline.inputs.record_shards`).

A listing streams: local folders are walked as they are read and the listed files are sorted
into a local spill (`pipeline.external_sort`), so a launcher listing 10^6 files holds about as
much as one listing 10^4.
"""
from __future__ import annotations

import itertools
import os
import posixpath
import re
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

from pipeline import files
from pipeline.external_sort import CHUNK, SortedSpill
from pipeline.elements import ErrorRecord, relative_path
from pipeline.image_headers import SNIFF_BYTES, sniff_image_format
from pipeline.images import extension_of, is_image_name
from pipeline.inputs.layouts import DATASET_FOLDERS, LAYOUT_NAMES, LAYOUTS, input_layout
from pipeline.inputs.path_lists import read_path_list

_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
# Object-store patterns listed at once: each match is one list in memory until it is sorted in.
LIST_THREADS = 8


@dataclass(frozen=True)
class InputSpec:
    """A resolved --input: its layout and (pattern, root) pairs to list."""
    layout: str  # a row of pipeline.inputs.layouts.LAYOUTS
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


def _dataset_folder_shards(path: str) -> str:
    """A folder a dataset library saved -> the glob of its shards; any other path as given."""
    if has_glob(path) or input_layout(path) != "files":
        return path
    folder = path.rstrip("/")
    for marker, shards in DATASET_FOLDERS:
        if files.exists(f"{folder}/{marker}"):
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


def _common_root(roots: Iterable[str]) -> str:
    """The longest shared leading path components (plain string split: keeps `gs://` intact),
    taken one root at a time (a path list's 10^8 folders are never a list)."""
    common: list[str] | None = None
    for root in roots:
        parts = root.rstrip("/").split("/")
        if common is None:
            common = parts
            continue
        same = 0
        while same < min(len(common), len(parts)) and common[same] == parts[same]:
            same += 1
        del common[same:]
    return "/".join(common or [])


def normalized_path(path: str) -> str:
    """One spelling per file: local paths absolute and normalised (`./a/../b` and `/x/b`), URIs as given."""
    if path and files.is_local(path):  # (a URL has a scheme: never local)
        return os.path.normpath(os.path.abspath(path))
    return path.rstrip("/")


def file_key(path: str, root: str) -> str:
    """The key of a plain file: its path below `root`; with no common root (`{cats,dogs}`,
    `{/data/a,/mnt/b}`) the whole path, without a leading slash, so keys stay distinct."""
    if root:
        return relative_path(path, root)
    return path.lstrip("/") if files.is_local(path) else path


class Listing:
    """What an input spec holds, sorted by key, kept in a local spill rather than in memory.

    Images (files) or shards, as (key, uri, bytes) by `inputs()` (a shard's key is its uri);
    files whose key another file has (`duplicates()`, error rows); files not read (`skipped()`);
    literal paths that do not exist (`missing`). Counts are attributes: the launcher's totals
    come from them, never from a list. Built by `list_inputs` (or `add` / `skip` / `finish`).
    """

    def __init__(self, layout: str, root: str, sized: bool = True, chunk: int = CHUNK,
                 repeats_are_duplicates: bool = False):
        self.layout, self.root, self.sized = layout, root, sized
        self._repeats_are_duplicates = repeats_are_duplicates  # else one file matched by two patterns is one input
        self.missing: list[str] = []  # literal paths (a brace range) that do not exist
        self.count = self.duplicate_count = self.skipped_count = 0
        self._bytes = 0
        self.skipped_extensions: Counter[str] = Counter()
        self.workspace = files.scratch_folder(self, "listing")  # the spill goes with the listing
        self._prefix = root.rstrip("/") + "/" if root else None
        self._entries = SortedSpill(self.workspace, "entries", chunk)  # (key, path or "" for root/key, bytes)
        self._skipped = SortedSpill(self.workspace, "skipped", chunk)  # (key, extension)

    def add(self, key: str, path: str, size: int) -> None:
        """One listed file or shard (repeats of a key are sorted out by `finish`)."""
        derived = self._prefix is not None and path.startswith(self._prefix) and path[len(self._prefix):] == key
        self._entries.add((key, "" if derived else path, size))  # "": most paths are root/key, stored once

    def skip(self, key: str, extension: str) -> None:
        self._skipped.add((key, extension))

    def finish(self) -> "Listing":
        """Count kept inputs, duplicates and skipped files (one pass over each sorted spill)."""
        for _, extension in self.skipped():
            self.skipped_count += 1
            self.skipped_extensions[extension or "(none)"] += 1
        for _, _, size, duplicate in self.entries():
            if duplicate:
                self.duplicate_count += 1
            else:
                self.count += 1
                self._bytes += size
        return self

    def entries(self) -> Iterator[tuple[str, str, int, bool]]:
        """(key, uri, bytes, duplicate) by key, then uri: the first of a key is kept, the others are duplicates."""
        previous = None
        for key, path, size in self._entries:
            if (key, path) != previous or self._repeats_are_duplicates:
                yield key, path or self._prefix + key, size, previous is not None and key == previous[0]
            previous = (key, path)

    def inputs(self) -> Iterator[tuple[str, str, int]]:
        """(key, uri, bytes) of every kept input, sorted by key."""
        return ((key, uri, size) for key, uri, size, duplicate in self.entries() if not duplicate)

    def duplicates(self) -> Iterator[ErrorRecord]:
        """A `DuplicateKey` error row for every input whose key an earlier (smaller) path has."""
        kept = None
        for key, uri, _, duplicate in self.entries():
            if duplicate:
                yield duplicate_key_error(key, uri, kept)
            else:
                kept = uri

    def skipped(self) -> Iterator[tuple[str, str]]:
        """(key, extension) of the files not read, sorted by key (a file two patterns matched: once)."""
        previous = None
        for record in self._skipped:
            if record != previous:
                yield record
            previous = record

    @property
    def bytes(self) -> int | None:
        return self._bytes if self.sized else None

    def skipped_by_extension(self) -> dict[str, int]:
        return dict(sorted(self.skipped_extensions.items()))


def duplicate_key_error(key: str, uri: str, kept: str) -> ErrorRecord:
    return ErrorRecord(key, uri, "read", "DuplicateKey", f"key {key!r} also comes from {kept}; kept that one")


def _walk_local(folder: str) -> Iterator[tuple[str, int]]:
    """(path, bytes) of every file below a local folder, as Beam's `folder/**` lists them (os.walk:
    symlinked folders not entered), streamed: a flat folder of 10^6 files is never one list."""
    stack = [folder]
    while stack:
        try:
            found = os.scandir(stack.pop())
        except OSError:  # gone, or unreadable: os.walk (Beam) passes over it too
            continue
        with found:
            for entry in found:
                if entry.is_dir():
                    if not entry.is_symlink():
                        stack.append(entry.path)
                    continue
                try:
                    size = entry.stat().st_size
                except OSError:  # a broken link, a file gone meanwhile: Beam leaves it out too
                    continue
                yield entry.path, size


def _match(pattern: str) -> Iterator[tuple[str, int]]:
    """(path, bytes) of every match; a literal path that does not exist gives (path, -1). A local
    folder is walked as it is read; other patterns are Beam matches (one list per pattern: brace
    patterns split an object-store listing, and are matched in parallel by `_matched`)."""
    if pattern.endswith("/**") and files.is_local(pattern) and not has_glob(pattern[:-3]):
        return _walk_local(pattern[:-3])
    if not has_glob(pattern) and not pattern.endswith("/**"):
        found = FileSystems.match([pattern])[0].metadata_list if files.exists(pattern) else []
    else:
        found = FileSystems.match([pattern])[0].metadata_list
    paths = [(m.path, m.size_in_bytes) for m in found]
    return iter(paths or ([] if has_glob(pattern) or pattern.endswith("/**") else [(pattern, -1)]))


def _sniffs_as_image(path: str) -> bool:
    try:
        with files.open_read(path) as handle:
            return sniff_image_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:  # unreadable now: list it as an image so the read stage reports it as an error row
        return True


def _list_root(lists: list[str], uri_column: str | None) -> str:
    """The key root of path lists: the common folder of every path they name (a first pass over
    the lists, holding one path at a time; sizes are not looked up: a list of a million
    object-store paths would cost a million requests)."""
    missing = [path for path in lists if not files.exists(path)]
    if missing:
        raise ValueError(f"input list {missing[0]!r} does not exist; give the path of a .txt, .csv or .tsv list")
    paths = (path for listed in lists for path in read_path_list(listed, uri_column))
    first = next(paths, None)
    if first is None:
        raise ValueError(f"input {', '.join(lists)} names no paths; a list has one path or URL per row")
    return _common_root(posixpath.dirname(path) for path in itertools.chain([first], paths))


def _matched(patterns: list[str]) -> Iterator[tuple[str, int]]:
    """Every pattern's matches (in no particular order: the listing sorts them). Object-store
    patterns are matched LIST_THREADS at a time, each match consumed as soon as it is back (an
    object store's listing of `{000..999}` prefixes is a thousand independent requests); local
    ones one after another, each streamed."""
    if all(files.is_local(pattern) for pattern in patterns) or len(patterns) == 1:
        for pattern in patterns:
            yield from _match(pattern)
        return
    queue = iter(patterns)
    with ThreadPoolExecutor(LIST_THREADS, thread_name_prefix="featurize-list") as pool:
        def submit(count: int) -> set:
            return {pool.submit(lambda pattern: list(_match(pattern)), pattern)
                    for pattern in itertools.islice(queue, count)}

        running = submit(LIST_THREADS)
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
                running |= submit(1)


def list_inputs(spec: InputSpec, uri_column: str | None = None, chunk: int = CHUNK) -> Listing:
    """List every input of `spec`, sorted by key into a local spill (`Listing`): memory stays flat
    however many files there are.

    Files without an image extension are `skipped`, except files without any extension,
    which are read when their first bytes are an image's (a path list's entries are all read:
    the list names them). A path matched by two patterns is listed once; two paths with one
    key (possible only without a common root, or a path listed twice) keep the smallest path
    and make the others `DuplicateKey` error rows.
    """
    root = spec.patterns[0][1] if spec.patterns else ""
    patterns = [pattern for pattern, _ in spec.patterns]
    row = LAYOUTS[spec.layout]
    if row.shard:
        listing = Listing(row.unit_layout, root, chunk=chunk)
        for path, size in _matched(patterns):
            # `shards/a.tar` and `/data/shards/a.tar`: one input, the same spelling (repeats are dropped below).
            spelling = normalized_path(path)
            if size < 0:  # a missing literal shard stays listed: it becomes a read error row, not a silent gap
                listing.missing.append(spelling)
            listing.add(spelling, spelling, max(size, 0))
        listing.missing = sorted(set(listing.missing))
        return listing.finish()
    if spec.layout == "list":
        lists = sorted({path for path, _ in _matched(patterns)})
        root = _list_root(lists, uri_column)
        # A path listed twice is a duplicate key (an error row), not one file matched twice.
        listing = Listing(row.unit_layout, root, sized=False, chunk=chunk, repeats_are_duplicates=True)
        for listed in lists:
            for path in read_path_list(listed, uri_column):
                listing.add(file_key(path, root), path, 0)
        return listing.finish()
    listing = Listing(row.unit_layout, root, chunk=chunk)
    for path, size in _matched(patterns):
        key, extension = file_key(path, root), extension_of(path)
        if not (is_image_name(path) or (not extension and _sniffs_as_image(path))):
            listing.skip(key, extension)
        else:
            listing.add(key, normalized_path(path) if len(patterns) > 1 else path, max(size, 0))
    return listing.finish()
