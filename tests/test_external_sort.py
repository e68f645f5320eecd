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


def test_many_runs_are_merged_in_rounds_with_few_files_open(tmp_path, monkeypatch):
    """10^8 files make ~1,000 runs: more open files than a default ulimit. Runs merge FAN_IN at a time."""
    from pipeline import external_sort

    monkeypatch.setattr(external_sort, "FAN_IN", 4)
    opened, real_open = [], open

    def counting_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        opened.append(handle)
        return handle

    records = [(random.Random(i).random(), i) for i in range(500)]
    spill = SortedSpill(str(tmp_path), "t", chunk=10)  # 50 runs -> 13 -> 4
    for record in records:
        spill.add(record)
    monkeypatch.setattr("builtins.open", counting_open)
    merged = iter(spill)
    first = next(merged)
    assert sum(not handle.closed for handle in opened) <= 4 + 1  # the runs being read (+1 written)
    assert [first, *merged] == sorted(records)
    assert len(os.listdir(tmp_path)) == 4  # the merged-away runs were deleted
    assert list(spill) == sorted(records)
