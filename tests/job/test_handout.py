"""pipeline.job.handout: the local runner's workers take units as they free up, each exactly once."""
import os
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.elements import WorkUnit
from pipeline.job.handout import Handout, hand_out, size_bands


def units(*sizes):
    return [(WorkUnit(f"u{i}", "tar", f"s{i}.tar", size_bytes=size), {}, None) for i, size in enumerate(sizes)]


def test_size_bands_cut_uneven_units_and_leave_even_ones_one_band():
    assert size_bands([]) == (0,)
    assert size_bands([100] * 9) == (0,)
    bands = size_bands([1, 2, 3, 4, 5, 6, 7, 8])
    assert bands == (7, 5, 3, 0) and list(bands) == sorted(bands, reverse=True)


def test_a_worker_takes_the_larger_units_first(tmp_path):
    sizes = [5, 900, 40, 7000, 300, 60, 2]
    handout = Handout(str(tmp_path), 1, size_bands(sizes))
    taken = [unit.size_bytes for unit, _, _ in handout.taken(units(*sizes))]
    assert handout.bands == (900, 60, 5, 0)
    assert taken == [900, 7000, 300, 60, 5, 40, 2]  # band by band, in the order they come within one


def test_workers_racing_for_the_same_units_take_each_exactly_once(tmp_path):
    all_units = units(*range(1, 401))
    handout = Handout(str(tmp_path), 4, size_bands([u.size_bytes for u, _, _ in all_units]))
    taken: list[list[str]] = [[] for _ in range(4)]
    workers = [threading.Thread(target=lambda mine=mine: mine.extend(u.unit_id for u, _, _ in handout.taken(all_units)))
               for mine in taken]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    every = [unit_id for mine in taken for unit_id in mine]
    assert sorted(every) == sorted(u.unit_id for u, _, _ in all_units)  # none twice, none lost
    assert sorted(os.listdir(tmp_path)) == sorted(every)  # a claim is a file


class _SlowFirst(beam.DoFn):
    """Takes units; the worker that takes the largest holds it until the other worker has taken every other
    unit (or 60 s pass): only a runner that hands units out as workers free up lets that happen."""

    def __init__(self, handout: Handout, others: int):
        self._handout, self._others = handout, others

    def process(self, ticket, units=()):
        for unit, _, _ in self._handout.taken(units):
            if unit.unit_id == "u0":
                deadline = time.monotonic() + 60
                while len(os.listdir(self._handout.folder)) < 1 + self._others and time.monotonic() < deadline:
                    time.sleep(0.05)
            yield ticket, unit.unit_id


def test_on_the_local_runner_a_free_worker_takes_what_a_static_split_would_give_the_busy_one(tmp_path):
    sizes = [10_000] + [10] * 7
    handout = Handout(str(tmp_path), 2, (1000, 0))  # u0 alone in the first band: whoever starts first takes it
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=multi_threading",
                               "--direct_num_workers=2"])
    with beam.Pipeline(options=options) as p:
        taken = hand_out(p | beam.Create(units(*sizes)), handout, _SlowFirst(handout, len(sizes) - 1))
        per_ticket = taken | beam.GroupByKey() | beam.MapTuple(lambda ticket, ids: sorted(ids))
        # One worker held u0 while the other took all 7 others; split up front, each would get 4.
        assert_that(per_ticket, equal_to([["u0"], [f"u{i}" for i in range(1, 8)]]))
