"""pipeline.job.plan_files: the plan written locally, uploaded into the store in parts, read by the workers."""

from pipeline.elements import WorkUnit
from pipeline.job import plan_files
from pipeline.job.entries import UnitEntry
from pipeline.job.plan_files import PENDING, STORE, PlanWriter, planned_unit_ids, read_plan_part, upload


def shard_unit(index):
    return WorkUnit(f"tar-s{index:03d}-abc", "tar", f"/data/s{index:03d}.tar", size_bytes=index, name=f"s{index:03d}.tar")


def test_units_and_committed_units_are_spread_evenly_over_the_parts_and_read_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_files, "PLAN_PARTS", 4)
    writer = PlanWriter()
    units = [shard_unit(index) for index in range(10)]
    for unit in units:
        writer.add(unit)
    old = [UnitEntry(f"tar-old{index}-abc", "tar", f"/old/{index}.tar", 3, rows=3, worker="host:1",
                     files={"keys": f"_featurize/units/old{index}.keys.npy", "features": "f.parquet"})
           for index in range(6)]
    for entry in old:
        writer.add_committed(entry)
    writer.close()
    staged = upload(writer, str(tmp_path / "out"))
    assert staged.parts == 4 and staged.shards
    read = [list(read_plan_part(index, staged)) for index in range(staged.parts)]
    pending = [[item for tag, item in part if tag == PENDING] for part in read]
    store = [[item for tag, item in part if tag == STORE] for part in read]
    committed = [[entry for unit, entry in part if entry is not None] for part in store]
    assert [len(part) for part in pending] == [3, 3, 2, 2] and [len(part) for part in committed] == [2, 2, 1, 1]
    assert [unit for part in pending for unit in part] == units  # whole: size, name, fields
    assert [entry for part in committed for entry in part] == old  # the entries whole, as the journal has them
    # a unit to process also takes part in the duplicate-key check, as a unit with no entry
    assert [unit for part in store for unit, entry in part if entry is None] == units
    assert planned_unit_ids(staged) == [unit.unit_id for unit in units]


def test_a_new_run_s_plan_replaces_the_last_one(tmp_path):
    staged = []
    for _ in range(2):
        writer = PlanWriter()
        writer.add(shard_unit(0))
        writer.close()
        staged.append(upload(writer, str(tmp_path)))
    plans = sorted(path.name for path in (tmp_path / "_featurize" / "plan").iterdir())
    assert plans == [staged[1].folder.rsplit("/", 1)[1]] and staged[0].folder != staged[1].folder
