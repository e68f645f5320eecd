"""Listing: resolve --input, expand its braces, list what it holds, and key each file.

What a path names comes from the table of layouts (`pipeline.inputs.layouts`): plain image files
(folders, globs, or the paths a `.txt`/`.csv`/`.tsv` list names), or shards, each one work unit
(tar, TFRecord, Parquet, Arrow; a folder a dataset library saved is its shards). Keys follow
docs/design.md: plain files are keyed by their path relative to the input root (the common
prefix of every folder or glob given, so `{cats,dogs}` keys `cats/001.jpg` and `dogs/001.jpg`);
shards are listed whole, their records keyed by their readers (`pipeline.inputs.tar`,
`pipeline.inputs.record_shards`).
"""
from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from pipeline import files
from pipeline.elements import ErrorRecord, relative_path
from pipeline.image_headers import SNIFF_BYTES, sniff_image_format
from pipeline.images import extension_of, is_image_name
from pipeline.inputs.layouts import DATASET_FOLDERS, LAYOUT_NAMES, LAYOUTS, input_layout
from pipeline.inputs.path_lists import read_path_list

_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


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


def _common_root(roots: list[str]) -> str:
    """The longest shared leading path components (plain string split: keeps `gs://` intact)."""
    parts = [r.rstrip("/").split("/") for r in roots]
    common = []
    for level in zip(*parts):
        if any(part != level[0] for part in level):
            break
        common.append(level[0])
    return "/".join(common)


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
        found = FileSystems.match([pattern])[0].metadata_list if files.exists(pattern) else []
    else:
        found = FileSystems.match([pattern])[0].metadata_list
    paths = [(m.path, m.size_in_bytes) for m in found]
    return paths or ([] if has_glob(pattern) or pattern.endswith("/**") else [(pattern, -1)])


def _sniffs_as_image(path: str) -> bool:
    try:
        with files.open_read(path) as handle:
            return sniff_image_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:  # unreadable now: list it as an image so the read stage reports it as an error row
        return True


def _listed_paths(lists: list[str], uri_column: str | None) -> tuple[str, list[str]]:
    """The key root and every path the lists name, repeats included (sizes are not looked up: a
    list of a million object-store paths would cost a million requests)."""
    missing = [path for path in lists if not files.exists(path)]
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
    listing = Listing(LAYOUTS[spec.layout].unit_layout, root)
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
    if LAYOUTS[spec.layout].shard:
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
