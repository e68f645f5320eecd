"""UnitEntry and ErrorCounts: the journal entry read and written in one place, in the format every earlier
store has (tests/job/journal_827aaef/: entries written by featurize 827aaef, before the entry was typed)."""
import json
import pathlib

import pytest

from pipeline.elements import ErrorRecord
from pipeline.job import journal
from pipeline.job.entries import ErrorCounts, UnitEntry
from pipeline.job.units import plan_units
from pipeline.job.writer import UnitWriter
from tests.helpers.units import FINGERPRINT, files_listing, row

OLD_ENTRIES = sorted((pathlib.Path(__file__).parent / "journal_827aaef").glob("*.json"))


def old_documents():
    return [json.loads(path.read_text()) for path in OLD_ENTRIES]


def test_entries_an_earlier_version_wrote_read_and_write_back_unchanged():
    assert len(OLD_ENTRIES) == 3  # two files units (one with an error row) and a tar unit with its keys file
    for document in old_documents():
        entry = UnitEntry.from_json(document)
        assert entry.to_json() == document
        entry.check_counts()
    tar = UnitEntry.from_json(next(d for d in old_documents() if d["layout"] == "tar"))
    assert (tar.inputs, tar.rows, tar.errors.total, tar.keys) == (4, 3, 1, None)
    assert tar.errors.by_kind == {"decode UnidentifiedImageError": 1} and tar.files["keys"].endswith(".keys.npy")


def test_a_store_written_before_resumes_reusing_its_units():
    """The planner reads the old entries: a listing of their keys plus one new file plans only the new one."""
    entries = [UnitEntry.from_json(d) for d in old_documents() if d["layout"] == "files"]
    keys = sorted(key for entry in entries for key in entry.keys)
    plan = plan_units(files_listing(keys + ["new.png"], root="/tmp/oldfx/in"), entries, unit_size=4, batch_size=4)
    assert [member for unit in plan.units() for member, _ in unit.members] == ["new.png"]
    assert sorted(plan.reused_units) == sorted(entry.unit for entry in entries)
    assert plan.reused_inputs == 7


def test_an_entry_committed_now_has_the_names_of_an_earlier_one(tmp_path):
    writer = UnitWriter(str(tmp_path), "files-a", "parquet", FINGERPRINT)
    writer.add_row(row(1))
    writer.add_error(error("decode", "UnidentifiedImageError", "bad"))
    entry = writer.commit(UnitEntry("files-a", "files", "/in", 2, worker="host:1", keys=("bad", "k1"), rejected=(),
                                    started_at="2026-12-07T10:00:00.000+00:00"))
    written = json.loads((tmp_path / "_featurize" / "units" / "files-a.json").read_text())
    old = next(d for d in old_documents() if d["layout"] == "files" and d["errors"])
    assert set(written) == set(old) | {"started_at"}  # the one name added since (old readers ignore it)
    assert UnitEntry.from_json(written) == entry and entry.is_final


def error(stage, kind, key, message="m"):
    return ErrorRecord(key, key, stage, kind, message)


def test_error_counts_add_merge_and_rank_the_most_common():
    one, two = ErrorCounts(), ErrorCounts()
    one.add(error("decode", "UnidentifiedImageError", "a", "cannot   identify\nimage"))
    one.add(error("read", "FileNotFoundError", "b"))
    two.add(error("decode", "UnidentifiedImageError", "c"))
    two.add(error("infer", "ValueError", "d"))
    one.merge(two)
    assert one.total == 4 and one.by_stage == {"read": 1, "decode": 2, "infer": 1, "write": 0}
    assert one.most_common(2) == [
        {"error": "decode UnidentifiedImageError", "count": 2, "example": "a: cannot identify image"},
        {"error": "infer ValueError", "count": 1, "example": "d: m"}]  # ties in name order
    assert ErrorCounts.of([UnitEntry("u", "tar", "s", 4, errors=one)] * 2).total == 8


def test_counts_that_do_not_add_up_are_refused():
    with pytest.raises(RuntimeError, match="unit u lost track of inputs: 3 read but 1 rows"):
        UnitEntry("u", "tar", "s", 3, rows=1).check_counts()


def test_a_retry_entry_is_not_final_and_its_summary_drops_the_key_lists(tmp_path):
    entry = UnitEntry("files-x", "files", "/in", 2, rows=1, retry=True, keys=("a", "b"), rejected=(("a", "/x/a"),))
    assert not entry.is_final and entry.to_json()["retry"] is True
    assert entry.summary().keys is None and entry.summary().rejected is None
    assert "keys" not in entry.summary().to_json()
    journal.commit_unit(str(tmp_path), entry, {})
    assert journal.read_journal(str(tmp_path), "files-x").keys == ("a", "b")
