"""Units handed out as the local runner's workers free up, instead of split between them up front.

Beam's local runner (FnApiRunner) cuts a stage's input into one fixed part per worker before the stage
starts (`ParallelBundleManager.process_bundle`: `input.partition(num_workers)`), so a run ends when its
slower part does: with uneven shards, one worker can run alone for a third of the run. On a local runner
with several workers, `ProcessUnits` instead gives each worker one ticket and every unit as a side input;
a worker takes the next unit nobody has taken. A claim is a file created with O_EXCL in a folder of the
launcher's machine, which is every local worker's machine too. Larger units go first (a few size bands,
one pass over the side input each), so the units that finish last are small ones.

A claim is not a commit: a worker that dies fails the local run (the FnApiRunner does not retry a
bundle), `finalize_store` refuses a store with a planned unit missing, and `--resume` redoes it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import apache_beam as beam

from pipeline.elements import WorkUnit

BANDS = 4  # size bands: passes over the side input, each cheap next to decoding a unit's images

Element = TypeVar("Element", bound=tuple)


@dataclass(frozen=True)
class Handout:
    """Where the workers of one local run claim units, and the size bands they take them in."""
    folder: str  # local: created by the launcher, removed when the run ends
    workers: int  # one ticket each
    bands: tuple[int, ...] = (0,)  # descending lower bounds of a unit's size_bytes; the last is 0

    def claim(self, unit_id: str) -> bool:
        """True for the one worker that takes `unit_id` first."""
        try:
            os.close(os.open(os.path.join(self.folder, unit_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def taken(self, elements: Iterable[Element]) -> Iterator[Element]:
        """The elements ((WorkUnit, ...) tuples) this worker claims, largest band first. `elements` is
        iterated once per band (a Beam side input can be)."""
        tried: set[str] = set()
        upper = math.inf
        for lower in self.bands:
            for element in elements:
                unit: WorkUnit = element[0]
                if lower <= unit.size_bytes < upper and unit.unit_id not in tried:
                    tried.add(unit.unit_id)
                    if self.claim(unit.unit_id):
                        yield element
            upper = lower


def size_bands(sizes: Sequence[int], bands: int = BANDS) -> tuple[int, ...]:
    """Descending lower bounds cutting `sizes` into about `bands` groups of as many units; (0,) when the
    units are all about one size (a folder's units are), so the workers make one pass."""
    if not sizes:
        return (0,)
    ordered = sorted(sizes)
    smallest = ordered[0]
    bounds = {ordered[len(ordered) * i // bands] for i in range(1, bands)}
    return tuple(sorted((b for b in bounds if b > smallest), reverse=True)) + (0,)


def hand_out(units: beam.PCollection, handout: Handout, dofn: beam.DoFn) -> beam.PCollection:
    """`dofn` run once per worker, `process(ticket, units=...)` given every unit as a side input, to
    take its units with `handout.taken(units)`."""
    # Distinct keys in order: the local runner deals a grouped stage's keys out in turn, one per worker.
    tickets = (units.pipeline | "Tickets" >> beam.Create([(i, i) for i in range(handout.workers)])
               | "OneTicketEach" >> beam.GroupByKey() | "Ticket" >> beam.Keys())
    return tickets | "TakeUnits" >> beam.ParDo(dofn, units=beam.pvalue.AsIter(units))
