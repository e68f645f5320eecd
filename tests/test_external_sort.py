"""pipeline.external_sort: sorted iteration over records spilled in sorted runs."""
import os
import random

from pipeline.external_sort import SortedSpill


def test_spilled_runs_merge_into_one_sorted_order_as_often_as_read(tmp_path):
    records = [(f"k{random.Random(i).randrange(500):04d}", f"p{i}", i) for i in range(2000)]
    spill = SortedSpill(str(tmp_path), "t", chunk=64)
    for record in records:
        spill.add(record)
    assert spill.count == 2000
    assert list(spill) == sorted(records) == list(spill)  # read twice: the runs stay
    assert len(os.listdir(tmp_path)) == 32  # 2000 / 64 runs: memory held at most 64 records while adding


def test_a_spill_that_fits_writes_nothing(tmp_path):
    spill = SortedSpill(str(tmp_path), "t", chunk=100)
    for key in ("b", "a", "c"):
        spill.add((key,))
    assert list(spill) == [("a",), ("b",), ("c",)] and os.listdir(tmp_path) == []
