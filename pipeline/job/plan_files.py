"""The plan in the store: the units a run processes, written by the launcher and read by the workers.

The job graph carries where the plan is and how many parts it has, never the units themselves:
a `beam.Create` of a million files' member lists is ~6 MB of graph, and Dataflow refuses graphs
over 10 MB. The launcher writes the plan to one local file while planning (`PlanWriter`), and
`upload` cuts it into parts and copies them into the store before the pipeline starts:

    _featurize/plan/RUN/units-NNNNN.jsonl.gz   one JSON line per unit to process, consecutive lines
                                               spread evenly over min(units, PLAN_PARTS) parts;
                                               for shard layouts also a line per committed unit
                                               (its kept keys' file, for the duplicate-key check
                                               across the store), spread the same way
    _featurize/plan/RUN/units.txt              the id of every unit to process, one per line:
                                               what the manifest step checks is committed

The graph holds one integer per part (at most PLAN_PARTS: a few KB, whatever the input). A part is
the most a runner that never rebalances (the DaskRunner) gives one partition: a unit each up to
1,024 units. A new run's plan replaces the previous run's.
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import time
import uuid
from typing import Any, Iterator, NamedTuple

from pipeline import files
from pipeline.elements import ErrorRecord, RecordFields, WorkUnit
from pipeline.job.entries import UnitEntry
from pipeline.store.schema import PLAN_DIR

PLAN_PARTS = 1024
UNIT_IDS = "units.txt"
PENDING_LINES, STORE_LINES = "pending.jsonl.gz", "store.jsonl.gz"  # the launcher's local files, cut into parts by `stage`
LOCAL_PLAN = (PENDING_LINES, STORE_LINES)
PENDING, STORE = "pending", "store"  # what a plan line gives: a unit to process, or a unit of the store to dedupe against


class UploadedPlan(NamedTuple):
    """What the job graph carries of a plan: its folder in the store and its size."""
    folder: str
    parts: int  # plan files, read by as many workers
    shards: bool  # shard units: keys are checked across the store, committed units included


def part_name(index: int) -> str:
    return f"units-{index:05d}.jsonl.gz"


def parts(units: int) -> int:
    """One part per unit up to PLAN_PARTS: a runner that never rebalances (Dask) gets a partition per part."""
    return min(units, PLAN_PARTS)


def unit_record(unit: WorkUnit) -> dict[str, Any]:
    """A pending unit as one JSON line; a member's uri is left out when it is `source/key`."""
    record: dict[str, Any] = {"unit": unit.unit_id, "layout": unit.layout, "source": unit.source}
    if unit.members:
        prefix = unit.source.rstrip("/") + "/"
        record["members"] = [[key, None if uri == prefix + key else uri] for key, uri in unit.members]
    if unit.rejected:
        record["rejected"] = [list(error) for error in unit.rejected]
    for name, value in (("bytes", unit.size_bytes), ("name", unit.name)):
        if value:
            record[name] = value
    if unit.fields != RecordFields():
        record["fields"] = [unit.fields.image, unit.fields.key]
    return record


def unit_from_record(record: dict[str, Any]) -> WorkUnit:
    prefix = record["source"].rstrip("/") + "/"
    return WorkUnit(
        record["unit"], record["layout"], record["source"],
        tuple((key, prefix + key if uri is None else uri) for key, uri in record.get("members", ())),
        tuple(ErrorRecord(*error) for error in record.get("rejected", ())),
        record.get("bytes", 0), record.get("name", ""), RecordFields(*record.get("fields", (None, None))))


class PlanWriter:
    """Writes a plan into local files as units are planned (the launcher never holds them all): the
    units to process, and apart from them the committed shard units they are checked against."""

    def __init__(self):
        self.folder = files.scratch_folder(self, "plan")
        # gzip level 1: member lists compress ~5x at a small cost; the plan of 10^8 files is GBs raw.
        self._handles = {name: gzip.open(os.path.join(self.folder, name), "wt", encoding="utf-8", compresslevel=1)
                         for name in LOCAL_PLAN}
        self._ids = open(os.path.join(self.folder, UNIT_IDS), "w", encoding="utf-8")
        self.lines = dict.fromkeys(LOCAL_PLAN, 0)
        self.units = 0
        self.shards = False

    def _write(self, name: str, record: dict[str, Any]) -> None:
        self._handles[name].write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines[name] += 1

    def add(self, unit: WorkUnit) -> None:
        """A unit to process."""
        self._write(PENDING_LINES, unit_record(unit))
        self._ids.write(unit.unit_id + "\n")
        self.units += 1
        self.shards = self.shards or unit.layout != "files"

    def add_committed(self, entry: UnitEntry) -> None:
        """A committed shard unit, for the duplicate-key check (its id, shard and kept keys' file)."""
        self._write(STORE_LINES, {STORE: entry.summary().to_json()})
        self.shards = True

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._ids.close()

    def lines_of(self, name: str) -> Iterator[str]:
        """Every line of one local file (after close)."""
        with gzip.open(os.path.join(self.folder, name), "rt", encoding="utf-8") as handle:
            yield from handle

    def records(self) -> Iterator[dict[str, Any]]:
        return (json.loads(line) for name in LOCAL_PLAN for line in self.lines_of(name))


def _shares(total: int, count: int) -> list[int]:
    """`total` lines over `count` parts, as evenly as can be."""
    each, extra = divmod(total, count)
    return [each + (index < extra) for index in range(count)]


def upload(writer: PlanWriter, output: str, threads: int = 8) -> UploadedPlan:
    """Copy a closed plan into the store (`_featurize/plan/RUN/`) in `parts(units)` parts, the units to
    process and the committed units spread evenly over them, replacing any earlier run's plan."""
    root = files.join(output, PLAN_DIR)
    if files.is_local(root):
        shutil.rmtree(root, ignore_errors=True)
    else:
        from apache_beam.io.filesystems import FileSystems

        earlier = files.list_paths(files.join(root, "**"))
        if earlier:
            FileSystems.delete(earlier)
    count = parts(writer.units)
    sources = [(writer.lines_of(name), _shares(writer.lines[name], count)) for name in LOCAL_PLAN]
    for index in range(count):  # cut locally (fast), then copy the parts in parallel
        with gzip.open(os.path.join(writer.folder, part_name(index)), "wt", encoding="utf-8", compresslevel=1) as part:
            for lines, shares in sources:
                part.writelines(itertools.islice(lines, shares[index]))
    folder = files.join(root, time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8])
    names = [UNIT_IDS] + [part_name(index) for index in range(count)]
    files.in_parallel(lambda name: files.upload(os.path.join(writer.folder, name), files.join(folder, name)), names,
                    threads)
    for name in names[1:]:  # the store has them now
        os.remove(os.path.join(writer.folder, name))
    return UploadedPlan(folder, count, writer.shards)


def read_plan_part(index: int, plan: UploadedPlan) -> Iterator[tuple[str, Any]]:
    """Part `index` of `plan`: (PENDING, WorkUnit) for a unit to process and, for shard plans, (STORE, (WorkUnit, committed
    entry or None)) for every unit of the store: what the duplicate-key check scans or loads."""
    with files.open_read(files.join(plan.folder, part_name(index)), decompress=True) as handle:
        for line in iter(handle.readline, b""):
            record = json.loads(line)
            if STORE in record:
                entry = UnitEntry.from_json(record[STORE])
                yield STORE, (WorkUnit(entry.unit, entry.layout, entry.source), entry)
                continue
            unit = unit_from_record(record)
            yield PENDING, unit
            if plan.shards:
                yield STORE, (unit, None)


def planned_unit_ids(plan: UploadedPlan) -> list[str]:
    """The id of every unit the plan processes."""
    with files.open_read(files.join(plan.folder, UNIT_IDS)) as handle:
        return handle.read().decode("utf-8").split()
