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
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.job.journal import is_final
from pipeline.elements import RecordFields, WorkUnit
from pipeline.inputs.layouts import SHARD_SUFFIXES
from pipeline.inputs.listing import Listing, file_key, normalized_path

# Files per unit for small runs: enough units that every worker gets some.
MIN_UNITS = 16


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


@dataclass
class Plan:
    """What a run must do, and what the store already holds."""
    listing: Listing
    pending: list[WorkUnit]
    committed: dict[str, dict[str, Any]]  # journal entries of units committed before this run, kept
    reused_units: list[str] = field(default_factory=list)  # committed units this listing still has
    removed: list[str] = field(default_factory=list)  # keys (files) or shards (tar) the listing lost

    @property
    def reused_inputs(self) -> int:
        return sum(entry["inputs"] for entry in self.committed.values())

    @property
    def pending_inputs(self) -> int | None:
        """Inputs to process when known before reading (files); None for shards."""
        if self.listing.layout != "files":
            return None
        return sum(len(unit.members) + len(unit.rejected) for unit in self.pending)


def plan_units(listing: Listing, committed: dict[str, dict[str, Any]], unit_size: int,
               batch_size: int, fields: RecordFields = RecordFields()) -> Plan:
    """Split a listing into pending units, given the journal entries of committed ones.
    `fields`: where TFRecord, Parquet and Arrow records hold their image and key."""
    retry = {unit_id: entry for unit_id, entry in committed.items() if entry.get("retry")}
    if listing.layout != "files":  # a shard's unit id does not change: a retry unit is simply pending again
        return _plan_shards(listing, kept(committed), fields)
    return _plan_files(listing, kept(committed), retry, unit_size, batch_size)


def _plan_shards(listing: Listing, committed: dict[str, dict[str, Any]], fields: RecordFields) -> Plan:
    pending, reused, listed = [], [], set()
    for shard, _, size in listing.inputs:
        unit_id = shard_unit_id(listing.layout, shard)
        listed.add(unit_id)
        if unit_id in committed:
            reused.append(unit_id)
        else:
            pending.append(WorkUnit(unit_id, listing.layout, shard, size_bytes=size,
                                    name=file_key(shard, listing.root), fields=fields))
    removed = sorted(entry["source"] for unit_id, entry in committed.items() if unit_id not in listed)
    return Plan(listing, pending, committed, reused, removed)


def _plan_files(listing: Listing, committed: dict[str, dict[str, Any]], retry: dict[str, dict[str, Any]],
                unit_size: int, batch_size: int) -> Plan:
    done_keys: dict[str, str] = {}  # key -> committed unit id
    for unit_id, entry in committed.items():
        for key in entry.get("keys", ()):
            done_keys[key] = unit_id
    # A retry unit runs again as the same unit (its entry is replaced), with the keys still listed.
    retry_keys = {key: unit_id for unit_id, entry in retry.items() for key in entry.get("keys", ())}
    todo = [item for item in listing.inputs if item[0] not in done_keys and item[0] not in retry_keys]
    rejected: dict[str, list] = {}
    # New paths whose key a committed unit already holds: error rows in a unit of their own.
    recorded = {(key, uri) for entry in committed.values() for key, uri in entry.get("rejected", ())}
    late_rejects = []
    for error in listing.duplicates:
        if error.key not in done_keys:
            rejected.setdefault(error.key, []).append(error)
        elif (error.key, error.uri) not in recorded:
            late_rejects.append(error)
    uris = {key: uri for key, uri, _ in listing.inputs}
    # Sized by the whole listing, not what is left: a resume then cuts the pending keys into
    # the very units the interrupted run had (every unit but the last is full).
    per_unit = files_per_unit(len(listing.inputs), unit_size, batch_size)
    pending = [WorkUnit(unit_id, "files", listing.root, tuple((key, uris[key]) for key in entry["keys"] if key in uris),
                        tuple(error for key in entry["keys"] for error in rejected.get(key, ())))
               for unit_id, entry in sorted(retry.items())]
    for start in range(0, len(todo), per_unit):
        chunk = todo[start:start + per_unit]
        keys = [key for key, _, _ in chunk]
        pending.append(WorkUnit(
            files_unit_id(keys), "files", listing.root, tuple((key, uri) for key, uri, _ in chunk),
            tuple(error for key in keys for error in rejected.get(key, ())), sum(size for _, _, size in chunk)))
    if late_rejects:
        pending.append(WorkUnit(files_unit_id([f"{e.key}\t{e.uri}" for e in late_rejects]), "files", listing.root,
                                rejected=tuple(late_rejects)))
    reused = sorted({unit_id for key, unit_id in done_keys.items() if key in uris})
    removed = sorted(key for key in [*done_keys, *retry_keys] if key not in uris)
    return Plan(listing, pending, committed, reused, removed)
