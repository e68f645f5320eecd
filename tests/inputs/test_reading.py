"""pipeline.inputs.reading (and pipeline.inputs.fetch, the bytes of one file): a unit's records,
and the bytes behind a row's uri."""
import errno

import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import files
from pipeline.elements import ErrorRecord, ImageRecord, WorkUnit
from pipeline.inputs.fetch import read_member
from pipeline.inputs.reading import read_uri, unit_records
from pipeline.transforms import ReadImages
from tests.helpers.tars import write_tar


def test_read_folder_keys_are_relative_posix_paths(tmp_path):
    (tmp_path / "a" / "ü").mkdir(parents=True)
    (tmp_path / "top.jpg").write_bytes(b"1")
    (tmp_path / "a" / "ü" / "фото.png").write_bytes(b"2")
    (tmp_path / "a" / "sidecar.json").write_bytes(b"{}")
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadImages(str(tmp_path))
        assert_that(read["images"], equal_to([
            ImageRecord("top.jpg", f"{tmp_path}/top.jpg", b"1"),
            ImageRecord("a/ü/фото.png", f"{tmp_path}/a/ü/фото.png", b"2")]), label="images")
        assert_that(read["errors"], equal_to([]), label="errors")


def test_read_uri_reads_files_and_tar_members(tmp_path):
    (tmp_path / "odd#dir").mkdir()
    write_tar(tmp_path / "odd#dir" / "s.tar", [("a.jpg", b"A"), ("b#1.jpg", b"B")])
    (tmp_path / "plain.jpg").write_bytes(b"P")
    assert read_uri(f"{tmp_path}/plain.jpg") == b"P"
    assert read_uri(f"{tmp_path}/odd#dir/s.tar#b#1.jpg") == b"B"
    with pytest.raises(FileNotFoundError):
        read_uri(f"{tmp_path}/odd#dir/s.tar#missing.jpg")


def test_a_unit_of_files_gives_its_rejects_then_one_row_per_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"A")
    rejected = ErrorRecord("b.jpg", f"{tmp_path}/other/b.jpg", "read", "DuplicateKey", "kept the other")
    unit = WorkUnit("files-x", "files", str(tmp_path), members=(("a.jpg", f"{tmp_path}/a.jpg"),
                                                                ("gone.jpg", f"{tmp_path}/gone.jpg")),
                    rejected=(rejected,))
    got = list(unit_records(unit))
    assert got[:2] == [rejected, ImageRecord("a.jpg", f"{tmp_path}/a.jpg", b"A")]
    assert (got[2].key, got[2].stage, got[2].error_type) == ("gone.jpg", "read", "FileNotFoundError")


def test_a_record_uri_that_is_not_an_index_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not name a record"):
        read_uri(f"{tmp_path}/p.parquet#first")


def test_a_transient_failure_of_a_filesystem_raises_for_the_unit_to_be_retried(tmp_path, monkeypatch):
    """A file that cannot be read is an error row; a filesystem that fails for now must not become one."""
    def reset(*_):
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    assert isinstance(read_member("x", str(tmp_path / "missing.jpg")), ErrorRecord)
    monkeypatch.setattr(files, "open_read", reset)
    with pytest.raises(ConnectionResetError):
        read_member("x", str(tmp_path / "x.jpg"))
