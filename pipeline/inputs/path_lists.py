"""Path lists: `--input list.txt | list.csv | list.tsv` names the images to read, one per row.

A `.txt` list has one path or URL per line (blank lines and lines starting with `#` are
skipped). A `.csv` / `.tsv` list has a header row; the paths are in the `--uri-column`, by
default the first of `URI_COLUMNS` present. Relative paths are relative to the list's own
folder; absolute paths and URIs (`gs://...`, `https://...`) are taken as they are.
"""
from __future__ import annotations

import codecs
import csv
import posixpath
from typing import Iterator

from pipeline import files

URI_COLUMNS = ("uri", "url", "path", "filepath", "file", "filename", "image_path")


class PathListError(ValueError):
    """A list that cannot be read as paths: one sentence naming the list and what would be valid."""


def _is_absolute(entry: str) -> bool:
    return entry.startswith("/") or not files.is_local(entry)


def _lines_of(path: str, block: int = 1 << 20) -> Iterator[str]:
    """The list's lines, cut at "\n" only and with it (as csv reads a file: a caption's U+2028 or form
    feed is not a row), decoded a block at a time (a list of 10^8 paths is never held whole; any Beam
    file object will do, it only needs `read`)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""
    with files.open_read(path, decompress=True) as handle:
        while True:
            data = handle.read(block)
            try:
                pending += decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise PathListError(f"input {path!r} is not UTF-8 text ({exc}); a path list has one path or URL "
                                    f"per line") from None
            *lines, pending = pending.split("\n")  # the last piece: a line the block's end cut, kept
            yield from (line + "\n" for line in lines)
            if not data:
                if pending:
                    yield pending
                return


def _column(path: str, header: list[str], uri_column: str | None) -> int:
    if uri_column is not None:
        if uri_column not in header:
            raise PathListError(f"uri_column {uri_column!r} is not a column of {path!r}; its columns: "
                                f"{', '.join(header)}")
        return header.index(uri_column)
    lowered = [name.strip().lower() for name in header]
    for name in URI_COLUMNS:
        if name in lowered:
            return lowered.index(name)
    raise PathListError(f"input {path!r} has no column named {', '.join(URI_COLUMNS)}; its columns: "
                        f"{', '.join(header)}; name the column of paths with --uri-column")


def read_path_list(path: str, uri_column: str | None = None) -> Iterator[str]:
    """The paths or URIs a list names, in list order, relative ones joined to the list's folder (lazily)."""
    if path.lower().endswith(".txt"):
        if uri_column is not None:
            raise PathListError(f"uri_column {uri_column!r} applies to .csv and .tsv lists; {path!r} is a .txt "
                                f"list with one path per line")
        # Every line break Python knows ends a .txt line (str.splitlines), as it always has.
        entries = (entry.strip() for line in _lines_of(path) for entry in line.splitlines())
        entries = (entry for entry in entries if entry and not entry.startswith("#"))
    else:
        rows = csv.reader(_lines_of(path), delimiter="\t" if path.lower().endswith(".tsv") else ",")
        header = next(rows, None)
        if not header:
            raise PathListError(f"input {path!r} is empty; a .csv / .tsv list starts with a header row")
        column = _column(path, header, uri_column)
        entries = (row[column].strip() for row in rows if len(row) > column and row[column].strip())
    folder = posixpath.dirname(path)
    for entry in entries:
        yield entry if _is_absolute(entry) else _below(folder, entry)


def _below(folder: str, entry: str) -> str:
    """`entry` relative to the list's folder; local paths normalised (`lists/../a.jpg` -> `a.jpg`)."""
    if not files.is_local(folder):
        return posixpath.join(folder, entry)
    return posixpath.normpath(posixpath.join(folder, entry))
