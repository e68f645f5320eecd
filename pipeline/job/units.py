"""Work units: the input split into deterministic pieces, and what a (resumed) run must process.

A shard (tar, TFRecord, Parquet, Arrow) is one unit. Plain files are sorted by key and cut into runs of consecutive
keys; a unit's id is a digest of its keys, so the same pending files always give the same
units, whatever the listing order or the number of workers. The launcher plans: it lists
the input once, reads the store's journal and splits the listing into units already
committed (reused), units to process, and inputs the store holds that the listing no longer
has (removed: kept in the store and reported). A committed unit marked `retry` (some of its
inputs could not be read: a missing shard, an unreadable file) is processed again.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, NamedTuple

from pipeline.elements import ErrorRecord, RecordFields, WorkUnit
from pipeline.external_sort import SortedSpill
from pipeline.inputs.layouts import SHARD_SUFFIXES
from pipeline.inputs.listing import Listing, duplicate_key_error, file_key, normalized_path
from pipeline.job.entries import UnitEntry
from pipeline.job.plan_files import PlanWriter, unit_from_record

# Files per unit for small runs: enough units that every worker gets some.
MIN_UNITS = 16
# Removed (and skipped) keys the manifest lists itself; the rest are counted (skipped: in a file).
LISTED_LIMIT = 1000


def shard_unit_id(layout: str, shard: str) -> str:
    """`<layout>-<shard name>-<digest of its absolute uri>` (`tar-train-0001-3f2a...`): readable, and
    distinct for equal names in two folders."""
    absolute = normalized_path(shard)
    name = posixpath.basename(shard)
    for suffix in sorted(SHARD_SUFFIXES[layout], key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64]
    return f"{layout}-{name}-{hashlib.sha1(absolute.encode('utf-8')).hexdigest()[:10]}"


def files_unit_id(keys: list[str]) -> str:
    return "files-" + hashlib.sha1("\n".join(keys).encode("utf-8")).hexdigest()[:16]


def files_per_unit(listed: int, unit_size: int, batch_size: int) -> int:
    """At most `unit_size`; fewer for small runs so there are about MIN_UNITS units; whole batches,
    since a unit's last batch is padded to the compiled batch size (38 files at batch 32 would
    compute 64 images)."""
    wanted = max(batch_size, math.ceil(listed / MIN_UNITS))
    return max(1, min(unit_size, math.ceil(wanted / batch_size) * batch_size))


def kept(committed: dict[str, UnitEntry]) -> dict[str, UnitEntry]:
    """The committed entries a run keeps: all but those marked `retry`, which it redoes."""
    return {unit_id: entry for unit_id, entry in committed.items() if entry.is_final}


class PlannedUnit(NamedTuple):
    """What the launcher keeps of a unit to process (its members are in the plan files)."""
    unit_id: str
    source: str
    inputs: int | None  # files: members and rejected inputs; shards: unknown before reading
    size_bytes: int


@dataclass
class Plan:
    """What a run must do, and what the store already holds. The units themselves are in `writer`'s
    local plan files (uploaded into the store by `pipeline.job.plan_files.upload`): the launcher
    holds O(units), never O(files)."""
    listing: Listing
    writer: PlanWriter
    pending: list[PlannedUnit]
    journal: dict[str, UnitEntry]  # every committed entry's summary, retry ones too
    reused_units: list[str] = field(default_factory=list)  # committed units this listing still has
    removed: list[str] = field(default_factory=list)  # the first LISTED_LIMIT keys (files) or shards the listing lost
    removed_count: int = 0

    @property
    def committed(self) -> dict[str, UnitEntry]:
        """Entries (summaries) of the units committed before this run that it keeps."""
        return kept(self.journal)

    @property
    def reused_inputs(self) -> int:
        return sum(entry.inputs for entry in self.committed.values())

    @property
    def pending_inputs(self) -> int | None:
        """Inputs to process when known before reading (files); None for shards."""
        if self.listing.layout != "files":
            return None
        return sum(unit.inputs for unit in self.pending)

    def units(self) -> list[WorkUnit]:
        """The pending units whole, in `pending` order (read back from the plan files: small plans only)."""
        found = {record["unit"]: unit_from_record(record) for record in self.writer.records() if "unit" in record}
        return [found[unit.unit_id] for unit in self.pending]


def plan_units(listing: Listing, journal: Iterable[UnitEntry], unit_size: int,
               batch_size: int, fields: RecordFields = RecordFields()) -> Plan:
    """Split a listing into pending units, given the store's committed journal entries (read as they
    come: a files store's entries hold every key, which only pass through a sorted spill here).
    `fields`: where TFRecord, Parquet and Arrow records hold their image and key."""
    writer = PlanWriter()
    try:
        if listing.layout != "files":  # a shard's unit id does not change: a retry unit is simply pending again
            plan = _plan_shards(listing, writer, {entry.unit: entry.summary() for entry in journal}, fields)
        else:
            plan = _plan_image_files(listing, writer, journal, unit_size, batch_size)
    finally:
        writer.close()
    return plan


def _plan_shards(listing: Listing, writer: PlanWriter, journal: dict[str, UnitEntry],
                 fields: RecordFields) -> Plan:
    committed = kept(journal)
    pending, reused, listed = [], [], set()
    for shard, _, size in listing.inputs():
        unit_id = shard_unit_id(listing.layout, shard)
        listed.add(unit_id)
        if unit_id in committed:
            reused.append(unit_id)
        else:
            pending.append(_write(writer, WorkUnit(unit_id, listing.layout, shard, size_bytes=size,
                                                   name=file_key(shard, listing.root), fields=fields)))
    for entry in committed.values():  # every shard of the store takes part in the duplicate-key check
        writer.add_committed(entry)
    removed = sorted(entry.source for unit_id, entry in committed.items() if unit_id not in listed)
    return Plan(listing, writer, pending, journal, reused, removed[:LISTED_LIMIT], len(removed))


class _Chunk:
    """The files unit being cut: consecutive pending keys, their duplicates' error rows."""

    def __init__(self):
        self.members: list[tuple[str, str]] = []
        self.rejected: list[ErrorRecord] = []
        self.size = 0

    def add(self, key: str, uri: str, size: int) -> None:
        self.members.append((key, uri))
        self.size += size

    def unit(self, root: str) -> WorkUnit:
        return WorkUnit(files_unit_id([key for key, _ in self.members]), "files", root, tuple(self.members),
                        tuple(self.rejected), self.size)


def _write(writer: PlanWriter, unit: WorkUnit) -> PlannedUnit:
    """Write a unit into the plan; what the launcher keeps of it (a shard's inputs are known once read)."""
    writer.add(unit)
    inputs = len(unit.members) + len(unit.rejected) if unit.layout == "files" else None
    return PlannedUnit(unit.unit_id, unit.source, inputs, unit.size_bytes)


class _Removed:
    """Committed keys the listing no longer has: counted, the first LISTED_LIMIT kept for the manifest."""

    def __init__(self):
        self.count, self.listed, self._last = 0, [], None

    def add(self, key: str) -> None:
        if key == self._last:  # a key a kept and a retry unit both hold
            return
        self._last, self.count = key, self.count + 1
        if len(self.listed) < LISTED_LIMIT:
            self.listed.append(key)


class _CommittedKeys:
    """The committed units' keys in key order, walked beside the sorted listing (a merge join).
    Records are plain (key, retry, unit id) tuples: a kept owner sorts before a retry one, and at
    10^8 keys a tuple pickles five times faster than a NamedTuple."""

    def __init__(self, owners: SortedSpill, removed: _Removed):
        self._records, self._removed = iter(owners), removed
        self._current = next(self._records, None)

    def owners_of(self, key: str) -> list[tuple[str, bool, str]]:
        """The (key, retry, unit id) of `key`'s committed owners, kept ones first; the keys passed over
        are removed ones."""
        found = []
        while self._current is not None and self._current[0] <= key:
            if self._current[0] == key:
                found.append(self._current)
            else:
                self._removed.add(self._current[0])
            self._current = next(self._records, None)
        return found

    def finish(self) -> None:
        """Every committed key after the listing's last is a removed one."""
        while self._current is not None:
            self._removed.add(self._current[0])
            self._current = next(self._records, None)


@dataclass
class _Journal:
    """What planning a files store keeps of its journal: its keys' owners (spilled), the summaries, and
    the duplicates a kept unit already holds as error rows."""
    owners: SortedSpill
    summaries: dict[str, UnitEntry]
    recorded: set[tuple[str, str]]  # (key, uri)


def _read_journal(entries: Iterable[UnitEntry], workspace: str) -> _Journal:
    journal = _Journal(SortedSpill(workspace, "committed"), {}, set())
    for entry in entries:
        for key in entry.keys or ():
            journal.owners.add((key, entry.retry, entry.unit))
        if entry.is_final:
            journal.recorded.update(entry.rejected or ())
        journal.summaries[entry.unit] = entry.summary()
    return journal


class _Redo:
    """What `retry` units redo, spilled by unit id (a list with many dead links makes most units retry
    units): their members (unit id, key, uri, bytes) and their duplicate keys (unit id, key, uri, kept uri)."""

    def __init__(self, workspace: str):
        self.members = SortedSpill(workspace, "redo-members")
        self.duplicates = SortedSpill(workspace, "redo-duplicates")

    def units(self, retry_ids: list[str], root: str) -> Iterator[WorkUnit]:
        """Each retry unit again, as the same unit (its entry is replaced), with the keys still listed."""
        members, duplicates = _ByUnit(self.members), _ByUnit(self.duplicates)
        for unit_id in retry_ids:
            again = _Chunk()
            for _, key, uri, size in members.take(unit_id):
                again.add(key, uri, size)
            again.rejected.extend(duplicate_key_error(key, uri, kept_uri)
                                  for _, key, uri, kept_uri in duplicates.take(unit_id))
            yield replace(again.unit(root), unit_id=unit_id)


class _ByUnit:
    """Records sorted by unit id, taken a unit at a time in that order."""

    def __init__(self, records: Iterable[tuple]):
        self._groups = itertools.groupby(records, key=lambda record: record[0])
        self._group = next(self._groups, None)

    def take(self, unit_id: str) -> list[tuple]:
        if self._group is None or self._group[0] != unit_id:
            return []
        records = list(self._group[1])
        self._group = next(self._groups, None)
        return records


def _plan_image_files(listing: Listing, writer: PlanWriter, entries: Iterable[UnitEntry],
                unit_size: int, batch_size: int) -> Plan:
    """Walk the sorted listing beside the sorted keys of committed units (a merge join): a listed key
    is reused (a kept unit has it), redone (a `retry` unit has it) or pending; a committed key the
    listing no longer has is removed. Pending keys are cut into units as they come."""
    journal = _read_journal(entries, listing.workspace)
    # Sized by the whole listing, not what is left: a resume then cuts the pending keys into
    # the very units the interrupted run had (every unit but the last is full).
    per_unit = files_per_unit(listing.count, unit_size, batch_size)
    removed, redo = _Removed(), _Redo(listing.workspace)
    committed = _CommittedKeys(journal.owners, removed)
    chunks: list[PlannedUnit] = []
    reused: set[str] = set()
    late: list[ErrorRecord] = []  # new paths whose key a kept unit already holds: error rows in a unit of their own
    chunk, kept_uri = _Chunk(), ""
    owner, owner_retries = None, False  # the unit that holds the current key (kept before retry) and its kind
    for key, uri, size, duplicate in listing.entries():
        if duplicate:  # a later path with the key of the path before it
            if owner is None:
                chunk.rejected.append(duplicate_key_error(key, uri, kept_uri))
            elif owner_retries:
                redo.duplicates.add((owner, key, uri, kept_uri))
            elif (key, uri) not in journal.recorded:
                late.append(duplicate_key_error(key, uri, kept_uri))
            continue
        owners, kept_uri = committed.owners_of(key), uri
        owner, owner_retries = (owners[0][2], owners[0][1]) if owners else (None, False)
        reused.update(unit_id for _, retry, unit_id in owners if not retry)
        if owner is None:
            if len(chunk.members) == per_unit:
                chunks.append(_write(writer, chunk.unit(listing.root)))
                chunk = _Chunk()
            chunk.add(key, uri, size)
        elif owner_retries:
            redo.members.add((owner, key, uri, size))
    committed.finish()
    if chunk.members:
        chunks.append(_write(writer, chunk.unit(listing.root)))
    retry_ids = sorted(unit_id for unit_id, entry in journal.summaries.items() if entry.retry)
    redone = [_write(writer, unit) for unit in redo.units(retry_ids, listing.root)]
    if late:
        late.sort(key=lambda error: error.uri)  # in path order, as the id has always been made
        chunks.append(_write(writer, WorkUnit(files_unit_id([f"{e.key}\t{e.uri}" for e in late]), "files",
                                              listing.root, rejected=tuple(late))))
    return Plan(listing, writer, redone + chunks, journal.summaries, sorted(reused), removed.listed, removed.count)
