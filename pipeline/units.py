"""Work units: the input split into deterministic pieces, and what a (resumed) run must process.

A tar shard is one unit. Plain files are sorted by key and cut into runs of consecutive
keys; a unit's id is a digest of its keys, so the same pending files always give the same
units, whatever the listing order or the number of workers. The launcher plans: it lists
the input once, reads the store's journal and splits the listing into units already
committed (reused), units to process, and inputs the store holds that the listing no longer
has (removed: kept in the store and reported).
"""
from __future__ import annotations

import hashlib
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.records import WorkUnit
from pipeline.sources import TAR_SUFFIXES, Listing

# Files per unit for small runs: enough units that every worker gets some.
MIN_UNITS = 16


def tar_unit_id(shard: str) -> str:
    """`tar-<shard name>-<digest of its absolute uri>`: readable, and distinct for equal names in two folders."""
    import os

    from apache_beam.io.filesystems import FileSystems

    absolute = os.path.abspath(shard) if FileSystems.get_scheme(shard) is None else shard
    name = posixpath.basename(shard)
    for suffix in TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64]
    return f"tar-{name}-{hashlib.sha1(absolute.encode('utf-8')).hexdigest()[:10]}"


def files_unit_id(keys: list[str]) -> str:
    return "files-" + hashlib.sha1("\n".join(keys).encode("utf-8")).hexdigest()[:16]


def files_per_unit(listed: int, unit_size: int, batch_size: int) -> int:
    """At most `unit_size`; fewer for small runs so there are about MIN_UNITS units, but never
    less than one batch (each unit ends with a padded partial batch)."""
    return max(1, min(unit_size, max(batch_size, math.ceil(listed / MIN_UNITS))))


@dataclass
class Plan:
    """What a run must do, and what the store already holds."""
    listing: Listing
    pending: list[WorkUnit]
    committed: dict[str, dict[str, Any]]  # journal entries of units committed before this run
    reused_units: list[str] = field(default_factory=list)  # committed units this listing still has
    removed: list[str] = field(default_factory=list)  # keys (files) or shards (tar) the listing lost

    @property
    def reused_inputs(self) -> int:
        return sum(entry["inputs"] for entry in self.committed.values())

    @property
    def pending_inputs(self) -> int | None:
        """Inputs to process when known before reading (files); None for tar shards."""
        if self.listing.layout == "tar":
            return None
        return sum(len(unit.members) + len(unit.rejected) for unit in self.pending)


def plan_units(listing: Listing, committed: dict[str, dict[str, Any]], unit_size: int,
               batch_size: int) -> Plan:
    """Split a listing into pending units, given the journal entries of committed ones."""
    if listing.layout == "tar":
        return _plan_shards(listing, committed)
    return _plan_files(listing, committed, unit_size, batch_size)


def _plan_shards(listing: Listing, committed: dict[str, dict[str, Any]]) -> Plan:
    pending, reused, listed = [], [], set()
    for shard, _, size in listing.inputs:
        unit_id = tar_unit_id(shard)
        listed.add(unit_id)
        if unit_id in committed:
            reused.append(unit_id)
        else:
            pending.append(WorkUnit(unit_id, "tar", shard, size_bytes=size))
    removed = sorted(entry["source"] for unit_id, entry in committed.items() if unit_id not in listed)
    return Plan(listing, pending, committed, reused, removed)


def _plan_files(listing: Listing, committed: dict[str, dict[str, Any]], unit_size: int, batch_size: int) -> Plan:
    done_keys: dict[str, str] = {}  # key -> committed unit id
    for unit_id, entry in committed.items():
        for key in entry.get("keys", ()):
            done_keys[key] = unit_id
    todo = [item for item in listing.inputs if item[0] not in done_keys]
    rejected: dict[str, list] = {}
    for error in listing.duplicates:
        if error.key not in done_keys:
            rejected.setdefault(error.key, []).append(error)
    listed = {key for key, _, _ in listing.inputs}
    # Sized by the whole listing, not what is left: a resume then cuts the pending keys into
    # the very units the interrupted run had (every unit but the last is full).
    per_unit = files_per_unit(len(listing.inputs), unit_size, batch_size)
    pending = []
    for start in range(0, len(todo), per_unit):
        chunk = todo[start:start + per_unit]
        keys = [key for key, _, _ in chunk]
        pending.append(WorkUnit(
            files_unit_id(keys), "files", listing.root, tuple((key, uri) for key, uri, _ in chunk),
            tuple(error for key in keys for error in rejected.get(key, ())), sum(size for _, _, size in chunk)))
    reused = sorted({unit_id for key, unit_id in done_keys.items() if key in listed})
    removed = sorted(key for key in done_keys if key not in listed)
    return Plan(listing, pending, committed, reused, removed)
