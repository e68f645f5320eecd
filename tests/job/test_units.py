"""Work units: deterministic ids and chunks, and what a resumed or incremental run must process."""
import random

import pytest

from pipeline.inputs.listing import Listing, duplicate_key_error
from pipeline.job.entries import UnitEntry
from pipeline.job.plan_files import unit_from_record, unit_record
from pipeline.job.units import files_per_unit, plan_units, shard_unit_id
from tests.helpers.units import files_listing


def entry_for(unit, **changes):
    """The journal entry a committed unit leaves (what planning reads back)."""
    keys = tuple(sorted({key for key, _ in unit.members}))
    return UnitEntry(unit.unit_id, "files", unit.source, len(keys), rows=len(keys), keys=keys, **changes)


def test_units_do_not_depend_on_listing_order():
    keys = [f"d{i % 7}/img{i:04d}.jpg" for i in range(2000)]
    first = plan_units(files_listing(keys), (), unit_size=64, batch_size=8).units()
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    # A listing spilled to disk 7 records at a time sorts the same (the external sort of 10^8 files).
    second = plan_units(files_listing(shuffled, chunk=7), (), unit_size=64, batch_size=8).units()
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
    units = plan_units(files_listing(keys), (), unit_size=40, batch_size=8).units()
    committed = [entry_for(u) for u in units[1::2]]  # every other unit got committed
    resumed = plan_units(files_listing(keys, chunk=16), committed, unit_size=40, batch_size=8)
    # the pending keys are cut into exactly the units the interrupted run had: same batches, same vectors
    assert [u.unit_id for u in resumed.pending] == [u.unit_id for u in units[0::2]]
    assert resumed.reused_inputs == sum(len(u.members) for u in units[1::2])
    assert resumed.pending_inputs == 300 - resumed.reused_inputs and not resumed.removed


def test_incremental_listing_processes_new_keys_and_reports_removed_ones():
    old = [f"a/{i:03d}.jpg" for i in range(50)]
    committed = [entry_for(u) for u in plan_units(files_listing(old), (), unit_size=1000, batch_size=8).units()]
    grown = old[1:] + [f"b/{i:03d}.jpg" for i in range(7)]
    later = plan_units(files_listing(grown), committed, unit_size=1000, batch_size=8)
    assert sorted(k for u in later.units() for k, _ in u.members) == [f"b/{i:03d}.jpg" for i in range(7)]
    assert later.removed == ["a/000.jpg"] and later.removed_count == 1
    assert set(later.reused_units) == {entry.unit for entry in committed}


def test_removed_keys_are_counted_all_and_listed_up_to_the_limit():
    old = [f"{i:05d}.jpg" for i in range(2500)]
    committed = [entry_for(u) for u in plan_units(files_listing(old), (), unit_size=100, batch_size=8).units()]
    later = plan_units(files_listing(old[2000:], chunk=300), committed, unit_size=100, batch_size=8)
    assert later.removed_count == 2000 and later.removed == old[:1000]
    assert later.pending == [] and later.reused_inputs == 2500


def test_a_key_listed_twice_is_one_input_and_one_error_row_in_its_unit():
    plan = plan_units(files_listing(["x.jpg", "y.jpg"], elsewhere=[("x.jpg", "other/x.jpg")]), (),
                      unit_size=1, batch_size=1)
    [unit_x] = [u for u in plan.units() if ("x.jpg", "photos/x.jpg") in u.members]
    assert unit_x.rejected == (duplicate_key_error("x.jpg", "other/x.jpg", "photos/x.jpg"),)
    assert plan.pending_inputs == 3


def test_a_unit_survives_its_plan_line_whole():
    plan = plan_units(files_listing(["x.jpg", "y.jpg"], elsewhere=[("x.jpg", "other/x.jpg")]), (),
                      unit_size=1000, batch_size=8)
    [unit] = plan.units()
    record = unit_record(unit)
    assert record["members"] == [["x.jpg", None], ["y.jpg", None]]  # root/key is not written out
    assert unit_from_record(record) == unit and unit.rejected[0].uri == "other/x.jpg"


@pytest.mark.parametrize("shard, other", [("a/train-0001.tar", "b/train-0001.tar"),
                                          ("gs://bucket/x.tar.gz", "gs://bucket/y/x.tar.gz")])
def test_tar_unit_ids_are_readable_and_distinct_for_equal_names(shard, other):
    unit_id = shard_unit_id("tar", shard)
    assert unit_id.startswith("tar-" + shard.rsplit("/", 1)[-1].split(".tar")[0] + "-")
    assert unit_id != shard_unit_id("tar", other) and unit_id == shard_unit_id("tar", shard)


def test_tar_plan_reuses_committed_shards_and_reports_removed_ones():
    listing = Listing("tar", "")
    for i in (3, 1, 0, 2):
        listing.add(f"s/{i}.tar", f"s/{i}.tar", 100)
    committed = [UnitEntry(shard_unit_id("tar", "s/1.tar"), "tar", "s/1.tar", 9, rows=9),
                 UnitEntry(shard_unit_id("tar", "s/gone.tar"), "tar", "s/gone.tar", 3, rows=3,
                           files={"keys": "_featurize/units/gone.keys.npy"})]
    plan = plan_units(listing.finish(), committed, unit_size=1000, batch_size=8)
    assert [u.source for u in plan.pending] == ["s/0.tar", "s/2.tar", "s/3.tar"]
    assert plan.reused_units == [shard_unit_id("tar", "s/1.tar")] and plan.removed == ["s/gone.tar"]
    assert plan.reused_inputs == 12 and plan.pending_inputs is None
    # Every committed shard is in the plan too, with its kept keys' file: the duplicate-key check reads it.
    store = [UnitEntry.from_json(record["store"]) for record in plan.writer.records() if "store" in record]
    assert sorted(store, key=lambda entry: entry.source) == committed


def test_a_new_path_whose_key_is_already_committed_becomes_an_error_row_once():
    keys = ["x.jpg", "y.jpg"]
    committed = [entry_for(u, rejected=())
                 for u in plan_units(files_listing(keys), (), unit_size=1000, batch_size=8).units()]
    elsewhere = [("x.jpg", "elsewhere/x.jpg")]
    later = plan_units(files_listing(keys, elsewhere=elsewhere), committed, unit_size=1000, batch_size=8)
    [rejects] = later.units()
    assert rejects.members == () and later.pending_inputs == 1
    assert rejects.rejected == (duplicate_key_error("x.jpg", "elsewhere/x.jpg", "photos/x.jpg"),)
    committed.append(UnitEntry(rejects.unit_id, "files", "photos", 1, keys=("x.jpg",),
                               rejected=(("x.jpg", "elsewhere/x.jpg"),)))
    assert plan_units(files_listing(keys, elsewhere=elsewhere), committed, 1000, 8).pending == []


def test_a_unit_marked_retry_runs_again_as_the_same_unit():
    keys = [f"{i}.jpg" for i in range(20)]
    units = plan_units(files_listing(keys), (), unit_size=8, batch_size=8).units()
    committed = [entry_for(u, retry=u is units[0]) for u in units]  # one of its files could not be read
    first = units[0]
    again = plan_units(files_listing(keys), committed, unit_size=8, batch_size=8)
    assert [u.unit_id for u in again.pending] == [first.unit_id] and again.units()[0].members == first.members
    assert first.unit_id not in again.committed and again.reused_inputs == 20 - len(first.members)


def test_a_redone_unit_keeps_its_members_in_order_and_the_duplicates_of_its_keys():
    keys = [f"{i:02d}.jpg" for i in range(20)]
    units = plan_units(files_listing(keys), (), unit_size=8, batch_size=8).units()
    committed = [entry_for(u, retry=u is units[1]) for u in units]
    elsewhere = [("09.jpg", "other/09.jpg"), ("09.jpg", "more/09.jpg")]
    again = plan_units(files_listing(keys, elsewhere=elsewhere, chunk=5), committed, unit_size=8, batch_size=8)
    [redone] = again.units()
    assert redone.unit_id == units[1].unit_id and redone.members == units[1].members
    assert redone.rejected == (duplicate_key_error("09.jpg", "more/09.jpg", "photos/09.jpg"),
                               duplicate_key_error("09.jpg", "other/09.jpg", "photos/09.jpg"))
    assert again.pending_inputs == 10 and sorted(again.reused_units) == sorted([units[0].unit_id, units[2].unit_id])
