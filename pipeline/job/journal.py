"""The store's journal: which work units are committed, and the protocol that commits one.

Inside an output folder, featurize keeps its own state under `_featurize/`:

    _featurize/store.json            what the store is (fingerprint, layout, key root, format),
                                     written before the first unit; --resume checks it
    _featurize/units/UNIT.json       a unit's journal entry: its counts and files. Its presence
                                     is the commit: a unit without one is not in the store
    _featurize/units/UNIT.*.keys.npy shard units: hashes of the sample keys the unit holds
                                     (dedupe's state: written and read by pipeline.job.dedupe)
    _featurize/tmp/                  files being written; never read

Commit protocol of a unit (`commit_unit`): its files are written under `tmp/`, renamed to
final names of their own attempt (`features/UNIT.ATTEMPT.parquet`, `errors/UNIT.ATTEMPT.parquet`),
then the journal entry naming them is written (temporary name, then rename). A crash before
the entry leaves files that no entry names: `remove_orphans` deletes them before a resumed run
starts (and after the last unit), and the unit runs again. An attempt that finds the unit
already committed (a Beam retry, a speculative copy) withdraws its files, so the entry always
names exactly one attempt's files and a unit never appears twice. An entry marked `retry`
(a unit some of whose inputs could not be read) is replaced when a resumed run redoes it.

What featurize may delete at all is `pipeline.store.schema`'s UNIT_PREFIXES (orphans) and
OWNED_PATTERNS (`clear_previous_output`, for --overwrite); both deletions live here.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from dataclasses import replace
from typing import Any, Iterable, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import files
from pipeline.files import READ_THREADS, join, list_paths, read_json, read_json_iter
from pipeline.job.entries import UnitEntry
from pipeline.store.schema import (ERRORS_DIR, FEATURES_DIR, OWNED_PATTERNS, STORE_STATE, TMP_DIR, UNIT_PREFIXES,
                                   UNITS_DIR)

FAILPOINTS_ENV = "FEATURIZE_FAILPOINTS"
FAILPOINT_DIR_ENV = "FEATURIZE_FAILPOINT_DIR"
_failpoint_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Hold here when a test asked for it, so it can kill the process tree at a known point.

    `FEATURIZE_FAILPOINTS="unit-commit@2,manifest"` holds the 2nd time this process reaches
    `unit-commit` and the 1st time it reaches `manifest`: it writes a file named after the
    point into `FEATURIZE_FAILPOINT_DIR` and sleeps (at most 10 minutes) until killed.
    Without the variable this is a dictionary lookup.
    """
    wanted = os.environ.get(FAILPOINTS_ENV)
    if not wanted:
        return
    _failpoint_hits[name] = _failpoint_hits.get(name, 0) + 1
    for item in wanted.split(","):
        point, _, nth = item.strip().partition("@")
        if point == name and _failpoint_hits[name] == int(nth or 1):
            marker = os.path.join(os.environ.get(FAILPOINT_DIR_ENV, "."), name)
            with open(marker, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(600)


def rename_over(source: str, destination: str) -> None:
    """Rename `source` over `destination` (filesystems whose rename refuses to replace: delete first)."""
    if files.is_local(destination):  # local disks need the folder; object stores have none
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    try:
        FileSystems.rename([source], [destination])
    except Exception:  # noqa: BLE001 - BeamIOError wraps the filesystem's own error; retried below
        # Only a filesystem that refuses to overwrite earns a delete; a source that is gone
        # (removed as an orphan meanwhile) must not cost the destination.
        if not (FileSystems.exists(source) and FileSystems.exists(destination)):
            raise
        FileSystems.delete([destination])
        FileSystems.rename([source], [destination])


def write_json_atomically(path: str, document: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: readers see the whole file or none."""
    temporary = f"{path}.{os.getpid()}-{time.monotonic_ns()}.tmp"
    with FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))
    rename_over(temporary, path)


# ---------------------------------------------------------------- the store
def read_store_state(output: str) -> dict[str, Any] | None:
    path = join(output, STORE_STATE)
    return read_json(path) if FileSystems.exists(path) else None


def write_store_state(output: str, state: dict[str, Any]) -> None:
    write_json_atomically(join(output, STORE_STATE), state)


def iter_committed_units(output: str, threads: int = READ_THREADS) -> Iterator[UnitEntry]:
    """Every committed unit's journal entry, in unit id order, read `threads` at a time as the
    caller consumes them (one listing, then the entries: on an object store 10^5 of them one after
    another take an hour, and a files store's entries hold every key, so they are never all kept)."""
    paths = sorted(list_paths(join(output, UNITS_DIR, "*.json")), key=_unit_of_entry)
    return map(UnitEntry.from_json, read_json_iter(paths, threads))


def committed_unit_ids(output: str) -> set[str]:
    """The ids of the committed units, from the names of their entries alone (one listing, no reads)."""
    return {_unit_of_entry(path) for path in list_paths(join(output, UNITS_DIR, "*.json"))}


def _unit_of_entry(path: str) -> str:
    """`.../_featurize/units/UNIT.json` -> UNIT."""
    return path.rsplit("/", 1)[-1][:-len(".json")]


def read_journal(output: str, unit_id: str) -> UnitEntry | None:
    path = join(output, UNITS_DIR, f"{unit_id}.json")
    return UnitEntry.from_json(read_json(path)) if FileSystems.exists(path) else None


def temp_path(output: str, unit_id: str, attempt: str, name: str) -> str:
    return join(output, TMP_DIR, f"{unit_id}.{attempt}.{name}")


def _is_final(entry: UnitEntry | None) -> bool:
    return entry is not None and entry.is_final


def now() -> str:
    """A journal time stamp: UTC, to the millisecond (a unit of small images takes well under a second)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def commit_unit(output: str, entry: UnitEntry, written: dict[str, tuple[str, str]]) -> UnitEntry:
    """Move a unit's written files into place, then write its journal entry (the commit point).

    `written` maps a role (features, errors, keys) to (temporary path, final path relative
    to the output, unique to this attempt). Returns the entry as committed, which is another
    attempt's when that one committed first (this attempt's files are then withdrawn).
    """
    unit = entry.unit
    existing = read_journal(output, unit)
    if _is_final(existing):
        FileSystems.delete([temporary for temporary, _ in written.values()])
        return existing
    for temporary, final in written.values():
        rename_over(temporary, join(output, final))
    failpoint("unit-commit")
    existing = read_journal(output, unit)
    if _is_final(existing):  # another attempt committed while this one renamed
        FileSystems.delete([join(output, final) for _, final in written.values()])
        return existing
    entry = replace(entry, files={role: final for role, (_, final) in written.items()},
                    committed_at=now())
    write_json_atomically(join(output, UNITS_DIR, f"{unit}.json"), entry.to_json())
    if existing is not None:  # a redone `retry` unit: the files of the entry it replaced are orphans now
        stale = [join(output, path) for path in existing.files.values()
                 if path not in entry.files.values() and FileSystems.exists(join(output, path))]
        if stale:
            FileSystems.delete(stale)
    return entry


def remove_orphans(output: str, entries: Iterable[UnitEntry]) -> list[str]:
    """Delete unit files that no journal entry names (a crash between rename and commit) and tmp/."""
    named = {join(output, path) for entry in entries for path in entry.files.values()}
    found = [path for folder in (FEATURES_DIR, ERRORS_DIR, UNITS_DIR) for prefix in UNIT_PREFIXES
             for path in list_paths(join(output, folder, prefix + "*"))
             if not path.endswith(".json")]  # journal entries are the commits themselves
    found += list_paths(join(output, TMP_DIR, "*"))
    orphans = [path for path in found if path not in named]
    if orphans:
        FileSystems.delete(orphans)
    return orphans


def clear_previous_output(output: str) -> None:
    """--overwrite removes only files featurize writes (schema.OWNED_PATTERNS); anything else in the
    directory stays."""
    owned = [m.path for pattern in OWNED_PATTERNS
             for m in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list]
    if owned:
        FileSystems.delete(owned)
