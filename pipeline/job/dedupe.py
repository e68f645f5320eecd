"""Duplicate keys across shards (tar, TFRecord, Parquet), found without holding every key in one place.

Every shard is scanned for its sample keys (headers only where it can); each key becomes a
128-bit hash, and the hashes travel in per-shard arrays split into `PARTITIONS` groups by
their first byte, so one group holds 1/PARTITIONS of the dataset's hashes (16 bytes a
sample) and a cluster runner can spill them. Within a group, a hash seen more than once is
a duplicate: the first occurrence in (shard uri, member position) order keeps the key,
unless a unit committed earlier already holds it (a store never rewrites committed units:
the new occurrence loses). The losers go back to their shard's unit as
{position: where the key is kept}, and the reader turns them into `DuplicateKey` error rows.

A committed unit is not scanned again: its kept keys' hashes were saved beside its journal
entry (`save_kept_keys`, `_featurize/units/UNIT.ATTEMPT.keys.npy`; the journal only names the
file) and are read back by `load_kept_keys`.
"""
from __future__ import annotations

import hashlib
import io
import posixpath
from typing import Iterable, Iterator, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.elements import WorkUnit
from pipeline.files import join
from pipeline.job.entries import UnitEntry

PARTITIONS = 64
HASH_DTYPE = np.dtype("V16")


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    """128-bit blake2b of each key (collisions are ~1e-21 likely at 1e9 keys)."""
    digests = b"".join(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest() for key in keys)
    return np.frombuffer(digests, dtype=HASH_DTYPE)


def save_kept_keys(path: str, hashes: np.ndarray) -> None:
    """Write a unit's kept-key hashes (its journal entry names the file, role `keys`)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(hashes, dtype=HASH_DTYPE).view(np.uint8).reshape(-1, 16),
            allow_pickle=False)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(buffer.getvalue())


def load_kept_keys(output: str, entry: UnitEntry) -> np.ndarray:
    """The hashes of the sample keys a committed shard unit holds (saved beside its entry)."""
    relative = entry.files.get("keys")
    if relative is None:  # a unit that holds no key
        return np.zeros(0, HASH_DTYPE)
    with FileSystems.open(join(output, relative), compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False).view(HASH_DTYPE).reshape(-1)


class KeySet(NamedTuple):
    """One unit's sample-key hashes within one partition."""
    unit_id: str
    shard: str
    committed: bool
    positions: np.ndarray  # int64: image-member position in the shard (-1 for committed units)
    hashes: np.ndarray  # HASH_DTYPE


def partition_keys(unit_id: str, shard: str, committed: bool, hashes: np.ndarray) -> Iterator[tuple[int, KeySet]]:
    """Split a unit's hashes into (partition, KeySet) by their first byte."""
    positions = np.full(len(hashes), -1, np.int64) if committed else np.arange(len(hashes), dtype=np.int64)
    first_bytes = hashes.view(np.uint8).reshape(-1, 16)[:, 0] if len(hashes) else np.zeros(0, np.uint8)
    partitions = first_bytes % PARTITIONS
    for partition in np.unique(partitions):
        mask = partitions == partition
        yield int(partition), KeySet(unit_id, shard, committed, positions[mask], hashes[mask])


def _describe(key_set: KeySet, position: int) -> str:
    if key_set.committed:
        return f"{posixpath.basename(key_set.shard)}, already in the store"
    return f"{posixpath.basename(key_set.shard)} (image member {position})"


def resolve_partition(partition_sets: tuple[int, Iterable[KeySet]]) -> Iterator[tuple[str, tuple[int, str]]]:
    """(partition, KeySets) -> (loser unit id, (member position, where the key is kept))."""
    _, sets = partition_sets
    sets = sorted(sets, key=lambda s: (not s.committed, s.shard))
    if not sets:
        return
    hashes = np.concatenate([s.hashes for s in sets])
    owner = np.concatenate([np.full(len(s.hashes), i, np.int64) for i, s in enumerate(sets)])
    positions = np.concatenate([s.positions for s in sets])
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[inverse] > 1)
    if not len(repeated):
        return
    # Sets are ordered committed first, then by shard uri; a stable sort keeps that order,
    # then member positions, within each repeated hash: the first entry keeps the key.
    order = repeated[np.lexsort((positions[repeated], owner[repeated], inverse[repeated]))]
    previous_group, winner = -1, ""
    for entry in order:
        group, key_set, position = inverse[entry], sets[owner[entry]], int(positions[entry])
        if group != previous_group:
            previous_group, winner = group, _describe(key_set, position)
        elif not key_set.committed:
            yield key_set.unit_id, (position, winner)


KEYS, SCANNED = "keys", "scanned"


def items_tagged(tag: str):
    """The items of `tag` in a PCollection of (tag, item) pairs."""
    def pick(tagged):
        if tagged[0] == tag:
            yield tagged[1]
    return pick


class _ScanKeys(beam.DoFn):
    """(WorkUnit, journal entry or None) -> (KEYS, (partition, KeySet)): load a committed unit's kept
    keys, or scan a pending shard (and (SCANNED, (unit id, its image-member count))).

    One output of tagged pairs, not a multi-output ParDo: the DaskRunner hands every consumer
    of a multi-output ParDo all its outputs mixed."""

    def __init__(self, output: str):
        self._output = output

    def process(self, unit_entry: tuple[WorkUnit, UnitEntry | None]):
        from pipeline.inputs.retries import retry_transient
        from pipeline.inputs.reading import scan_unit_keys

        unit, entry = unit_entry
        if entry is not None:
            hashes = load_kept_keys(self._output, entry)
        else:
            keys = retry_transient(lambda: scan_unit_keys(unit), f"key scan of {unit.source}")
            yield SCANNED, (unit.unit_id, len(keys))
            hashes = key_hashes(keys)
        for partition in partition_keys(unit.unit_id, unit.source, entry is not None, hashes):
            yield KEYS, partition


class FindDuplicateKeys(beam.PTransform):
    """Keys that more than one shard input has, across every shard of the store.

    Input: a PCollection of (WorkUnit, journal entry or None) for every shard unit of the store
    (committed ones with their entry, pending ones with None). Output: a dict with `losers`:
    (unit id, (member position, where the key is kept)) for every member that must give up
    its key, and `scanned`: (unit id, image members the scan saw) for every pending unit (the
    reader checks it sees as many: a scan that saw fewer could not check them all). `output`
    is the store, where committed units' kept keys are read from.
    """

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, units):
        tagged = units | "ScanKeys" >> beam.ParDo(_ScanKeys(self._output))
        losers = (tagged
                  | "Keys" >> beam.FlatMap(items_tagged(KEYS))
                  | "GroupPartitions" >> beam.GroupByKey()
                  | "Resolve" >> beam.FlatMap(resolve_partition))
        return {"losers": losers, "scanned": tagged | "Scanned" >> beam.FlatMap(items_tagged(SCANNED))}
