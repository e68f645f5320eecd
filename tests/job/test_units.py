"""Work units: deterministic ids and chunks, and what a resumed or incremental run must process."""
import random

import pytest

from pipeline.elements import ErrorRecord
from pipeline.inputs.listing import Listing
from pipeline.job.units import files_per_unit, plan_units, shard_unit_id


def files_listing(keys, root="photos", duplicates=()):
    inputs = [(key, f"{root}/{key}", 10) for key in sorted(keys)]
    return Listing("files", root, inputs, list(duplicates))


def entry_for(unit):
    """The journal entry a committed unit leaves (what planning reads back)."""
    keys = sorted({key for key, _ in unit.members})
    return {"unit": unit.unit_id, "layout": "files", "source": unit.source, "inputs": len(keys), "keys": keys}


def test_units_do_not_depend_on_listing_order():
    keys = [f"d{i % 7}/img{i:04d}.jpg" for i in range(2000)]
    first = plan_units(files_listing(keys), {}, unit_size=64, batch_size=8).pending
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    second = plan_units(files_listing(shuffled), {}, unit_size=64, batch_size=8).pending
    assert [u.unit_id for u in first] == [u.unit_id for u in second]
    assert [len(u.members) for u in first] == [64] * 31 + [16]
    assert sorted(k for u in first for k, _ in u.members) == sorted(keys)
    assert len({u.unit_id for u in first}) == len(first)


def test_unit_size_is_capped_and_small_runs_still_get_several_units():
    assert files_per_unit(1_000_000, unit_size=1000, batch_size=32) == 1000
    assert files_per_unit(1000, unit_size=1000, batch_size=32) == 64  # ~16 units of whole batches
    assert files_per_unit(600, unit_size=1000, batch_size=32) == 64  # not 38: 6 files would cost a batch of 32
    assert files_per_unit(20, unit_size=1000, batch_size=8) == 8  # never less than one batch
    assert files_per_unit(20, unit_size=5, batch_size=8) == 5  # --unit-size wins


def test_resume_after_a_crash_replans_only_uncommitted_units_with_the_same_ids():
    keys = [f"img{i:04d}.jpg" for i in range(300)]
    plan = plan_units(files_listing(keys), {}, unit_size=40, batch_size=8)
    committed = {u.unit_id: entry_for(u) for u in plan.pending[1::2]}  # every other unit got committed
    resumed = plan_units(files_listing(keys), committed, unit_size=40, batch_size=8)
    # the pending keys are cut into exactly the units the interrupted run had: same batches, same vectors
    assert [u.unit_id for u in resumed.pending] == [u.unit_id for u in plan.pending[0::2]]
    assert resumed.reused_inputs == sum(len(u.members) for u in plan.pending[1::2])
    assert resumed.pending_inputs == 300 - resumed.reused_inputs and not resumed.removed


def test_incremental_listing_processes_new_keys_and_reports_removed_ones():
    old = [f"a/{i:03d}.jpg" for i in range(50)]
    plan = plan_units(files_listing(old), {}, unit_size=1000, batch_size=8)
    committed = {u.unit_id: entry_for(u) for u in plan.pending}
    grown = old[1:] + [f"b/{i:03d}.jpg" for i in range(7)]
    later = plan_units(files_listing(grown), committed, unit_size=1000, batch_size=8)
    assert sorted(k for u in later.pending for k, _ in u.members) == [f"b/{i:03d}.jpg" for i in range(7)]
    assert later.removed == ["a/000.jpg"]
    assert set(later.reused_units) == set(committed)


def test_a_key_listed_twice_is_one_input_and_one_error_row_in_its_unit():
    duplicate = ErrorRecord("x.jpg", "other/x.jpg", "read", "DuplicateKey", "also from photos/x.jpg")
    plan = plan_units(files_listing(["x.jpg", "y.jpg"], duplicates=[duplicate]), {}, unit_size=1, batch_size=1)
    [unit_x] = [u for u in plan.pending if ("x.jpg", "photos/x.jpg") in u.members]
    assert unit_x.rejected == (duplicate,) and plan.pending_inputs == 3


@pytest.mark.parametrize("shard, other", [("a/train-0001.tar", "b/train-0001.tar"),
                                          ("gs://bucket/x.tar.gz", "gs://bucket/y/x.tar.gz")])
def test_tar_unit_ids_are_readable_and_distinct_for_equal_names(shard, other):
    unit_id = shard_unit_id("tar", shard)
    assert unit_id.startswith("tar-" + shard.rsplit("/", 1)[-1].split(".tar")[0] + "-")
    assert unit_id != shard_unit_id("tar", other) and unit_id == shard_unit_id("tar", shard)


def test_tar_plan_reuses_committed_shards_and_reports_removed_ones():
    listing = Listing("tar", "", [(f"s/{i}.tar", f"s/{i}.tar", 100) for i in range(4)])
    committed = {shard_unit_id("tar", "s/1.tar"): {"unit": shard_unit_id("tar", "s/1.tar"), "source": "s/1.tar", "inputs": 9},
                 shard_unit_id("tar", "s/gone.tar"): {"unit": shard_unit_id("tar", "s/gone.tar"), "source": "s/gone.tar", "inputs": 3}}
    plan = plan_units(listing, committed, unit_size=1000, batch_size=8)
    assert [u.source for u in plan.pending] == ["s/0.tar", "s/2.tar", "s/3.tar"]
    assert plan.reused_units == [shard_unit_id("tar", "s/1.tar")] and plan.removed == ["s/gone.tar"]
    assert plan.reused_inputs == 12 and plan.pending_inputs is None


def test_a_new_path_whose_key_is_already_committed_becomes_an_error_row_once():
    keys = ["x.jpg", "y.jpg"]
    plan = plan_units(files_listing(keys), {}, unit_size=1000, batch_size=8)
    committed = {u.unit_id: dict(entry_for(u), rejected=[]) for u in plan.pending}
    late = ErrorRecord("x.jpg", "elsewhere/x.jpg", "read", "DuplicateKey", "also from photos/x.jpg")
    later = plan_units(files_listing(keys, duplicates=[late]), committed, unit_size=1000, batch_size=8)
    [rejects] = later.pending
    assert rejects.members == () and rejects.rejected == (late,) and later.pending_inputs == 1
    committed[rejects.unit_id] = {"unit": rejects.unit_id, "inputs": 1, "keys": ["x.jpg"],
                                  "rejected": [("x.jpg", "elsewhere/x.jpg")]}
    assert plan_units(files_listing(keys, duplicates=[late]), committed, 1000, 8).pending == []


def test_a_unit_marked_retry_runs_again_as_the_same_unit():
    keys = [f"{i}.jpg" for i in range(20)]
    plan = plan_units(files_listing(keys), {}, unit_size=8, batch_size=8)
    committed = {u.unit_id: entry_for(u) for u in plan.pending}
    first = plan.pending[0]
    committed[first.unit_id]["retry"] = True  # one of its files could not be read
    again = plan_units(files_listing(keys), committed, unit_size=8, batch_size=8)
    assert [u.unit_id for u in again.pending] == [first.unit_id] and again.pending[0].members == first.members
    assert first.unit_id not in again.committed and again.reused_inputs == 20 - len(first.members)
