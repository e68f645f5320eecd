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
from typing import Any, Iterable, NamedTuple

from pipeline.elements import ErrorRecord, RecordFields, WorkUnit
from pipeline.external_sort import SortedSpill
from pipeline.inputs.layouts import SHARD_SUFFIXES
from pipeline.inputs.listing import Listing, duplicate_key_error, file_key, normalized_path
from pipeline.job.journal import is_final, summary
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


def kept(committed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The committed entries a run keeps: all but those marked `retry`, which it redoes."""
    return {unit_id: entry for unit_id, entry in committed.items() if is_final(entry)}


class PlannedUnit(NamedTuple):
    """What the launcher keeps of a unit to process (its members are in the plan files)."""
    unit_id: str
    source: str
    inputs: int | None  # files: members and rejected inputs; shards: unknown before reading
    size_bytes: int


@dataclass
class Plan:
    """What a run must do, and what the store already holds. The units themselves are in `writer`'s
    local plan files (staged into the store by `pipeline.job.plan_files.stage`): the launcher
    holds O(units), never O(files)."""
    listing: Listing
    writer: PlanWriter
    pending: list[PlannedUnit]
    journal: dict[str, dict[str, Any]]  # every committed entry's summary, retry ones too
    reused_units: list[str] = field(default_factory=list)  # committed units this listing still has
    removed: list[str] = field(default_factory=list)  # the first LISTED_LIMIT keys (files) or shards the listing lost
    removed_count: int = 0

    @property
    def committed(self) -> dict[str, dict[str, Any]]:
        """Entries (summaries) of the units committed before this run that it keeps."""
        return kept(self.journal)

    @property
    def reused_inputs(self) -> int:
        return sum(entry["inputs"] for entry in self.committed.values())

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


def plan_units(listing: Listing, journal: Iterable[dict[str, Any]], unit_size: int,
               batch_size: int, fields: RecordFields = RecordFields()) -> Plan:
    """Split a listing into pending units, given the store's committed journal entries (read as they
    come: a files store's entries hold every key, which only pass through a sorted spill here).
    `fields`: where TFRecord, Parquet and Arrow records hold their image and key."""
    writer = PlanWriter()
    try:
        if listing.layout != "files":  # a shard's unit id does not change: a retry unit is simply pending again
            plan = _plan_shards(listing, writer, {entry["unit"]: summary(entry) for entry in journal}, fields)
        else:
            plan = _plan_files(listing, writer, journal, unit_size, batch_size)
    finally:
        writer.close()
    return plan


def _plan_shards(listing: Listing, writer: PlanWriter, journal: dict[str, dict[str, Any]],
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
    removed = sorted(entry["source"] for unit_id, entry in committed.items() if unit_id not in listed)
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


def _plan_files(listing: Listing, writer: PlanWriter, journal: Iterable[dict[str, Any]],
                unit_size: int, batch_size: int) -> Plan:
    """Walk the sorted listing beside the sorted keys of committed units (a merge join): a listed key
    is reused (a kept unit has it), redone (a `retry` unit has it) or pending; a committed key the
    listing no longer has is removed. Pending keys are cut into units as they come."""
    owners = SortedSpill(listing.workspace, "committed")  # (key, final?, unit id)
    summaries: dict[str, dict[str, Any]] = {}
    recorded: set[tuple[str, str]] = set()  # (key, uri) of duplicates a kept unit already has as error rows
    for entry in journal:
        final = is_final(entry)
        for key in entry.get("keys", ()):
            owners.add((key, not final, entry["unit"]))  # a kept owner sorts before a retry one
        if final:
            recorded.update((key, uri) for key, uri in entry.get("rejected", ()))
        summaries[entry["unit"]] = summary(entry)
    # Sized by the whole listing, not what is left: a resume then cuts the pending keys into
    # the very units the interrupted run had (every unit but the last is full).
    per_unit = files_per_unit(listing.count, unit_size, batch_size)
    chunks: list[PlannedUnit] = []
    # What `retry` units redo, spilled (a list with many dead links makes most units retry units):
    # (unit id, key, 0, uri, bytes) for a member, (unit id, key, 1, uri, kept uri) for a duplicate.
    redo = SortedSpill(listing.workspace, "redo")
    reused: set[str] = set()
    removed: list[str] = []
    late: list[ErrorRecord] = []  # new paths whose key a kept unit already holds: error rows in a unit of their own
    chunk = _Chunk()
    committed_keys = iter(owners)
    current = next(committed_keys, None)
    removed_count, last_removed = 0, None

    def owners_of(key: str | None) -> list[tuple]:
        """Consume the committed keys up to `key` (None: all); returns the owners of `key` (kept ones
        first), counting the keys passed over as removed."""
        nonlocal current, removed_count, last_removed
        found = []
        while current is not None and (key is None or current[0] <= key):
            if current[0] == key:
                found.append(current)
            elif current[0] != last_removed:
                last_removed = current[0]
                removed_count += 1
                if len(removed) < LISTED_LIMIT:
                    removed.append(current[0])
            current = next(committed_keys, None)
        return found

    owner, kept_uri = None, ""
    for key, uri, size, duplicate in listing.entries():
        if not duplicate:
            owners, kept_uri = owners_of(key), uri
            owner = owners[0] if owners else None
            reused.update(unit_id for _, retry, unit_id in owners if not retry)
            if owner is not None and owner[1]:
                redo.add((owner[2], key, 0, uri, size))
            elif owner is None:
                if len(chunk.members) == per_unit:
                    chunks.append(_write(writer, chunk.unit(listing.root)))
                    chunk = _Chunk()
                chunk.add(key, uri, size)
            continue
        if owner is None:
            chunk.rejected.append(duplicate_key_error(key, uri, kept_uri))
        elif owner[1]:
            redo.add((owner[2], key, 1, uri, kept_uri))
        elif (key, uri) not in recorded:
            late.append(duplicate_key_error(key, uri, kept_uri))
    owners_of(None)
    if chunk.members:
        chunks.append(_write(writer, chunk.unit(listing.root)))
    # A retry unit runs again as the same unit (its entry is replaced), with the keys still listed.
    retry_ids = sorted(unit_id for unit_id, entry in summaries.items() if entry.get("retry"))
    redone, records = [], itertools.groupby(redo, key=lambda record: record[0])
    group = next(records, None)
    for unit_id in retry_ids:
        again = _Chunk()
        if group is not None and group[0] == unit_id:
            for _, key, kind, uri, extra in group[1]:
                if kind:
                    again.rejected.append(duplicate_key_error(key, uri, extra))
                else:
                    again.add(key, uri, extra)
            group = next(records, None)
        redone.append(_write(writer, replace(again.unit(listing.root), unit_id=unit_id)))
    if late:
        late.sort(key=lambda error: error.uri)  # in path order, as the id has always been made
        chunks.append(_write(writer, WorkUnit(files_unit_id([f"{e.key}\t{e.uri}" for e in late]), "files",
                                              listing.root, rejected=tuple(late))))
    return Plan(listing, writer, redone + chunks, summaries, sorted(reused), removed, removed_count)
