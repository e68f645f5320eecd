"""pipeline.inputs.tar: WebDataset sample keys, the key scan, and streaming a shard's image members
(through ReadImages too): duplicates, missing and truncated shards, compressed streams."""
import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import files
from pipeline.inputs.tar import read_tar_member, read_tar_records, scan_tar_keys, webdataset_key
from pipeline.transforms import ReadImages
from tests.helpers.tars import write_tar


@pytest.mark.parametrize("member, key", [
    ("a.jpg", "a"), ("dir/a.b.jpg", "dir/a"), ("./dir/sub/x.y.z.png", "dir/sub/x"), ("noext", "noext"),
])
def test_webdataset_key_cuts_at_first_dot_of_base_name(member, key):
    assert webdataset_key(member) == key


def test_read_tar_shards_streams_samples_and_reports_missing_and_duplicate(tmp_path):
    write_tar(tmp_path / "s-0.tar", [("x/a.b.jpg", b"A"), ("x/a.b.json", b"{}"), ("c.png", b"C"), ("dup.jpg", b"D0"),
                                ("c.png", b"C again")])  # tar allows a member name twice
    write_tar(tmp_path / "s-1.tar", [("d.jpg", b"D"), ("dup.png", b"D1")])
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadImages(f"{tmp_path}/s-{{0..2}}.tar")  # s-2.tar does not exist
        images = read["images"] | "I" >> beam.Map(lambda r: (r.key, r.uri, r.data))
        errors = read["errors"] | "E" >> beam.Map(lambda e: (e.key, e.uri, e.stage, e.error_type))
        assert_that(images, equal_to([
            ("x/a", f"{tmp_path}/s-0.tar#x/a.b.jpg", b"A"),
            ("c", f"{tmp_path}/s-0.tar#c.png", b"C"),
            ("dup", f"{tmp_path}/s-0.tar#dup.jpg", b"D0"),  # the first in shard order keeps a duplicated key
            ("d", f"{tmp_path}/s-1.tar#d.jpg", b"D")]), label="images")
        assert_that(errors, equal_to([
            ("s-2.tar", f"{tmp_path}/s-2.tar", "read", "FileNotFoundError"),
            ("c", f"{tmp_path}/s-0.tar#c.png", "read", "DuplicateKey"),
            ("dup", f"{tmp_path}/s-1.tar#dup.png", "read", "DuplicateKey")]), label="errors")


def test_truncated_shard_keeps_complete_members_and_reports_the_rest(tmp_path):
    members = [(f"m{i}.jpg", bytes([i]) * 5000) for i in range(6)]
    write_tar(tmp_path / "whole.tar", members)
    data = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "whole.tar").unlink()
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadImages(f"{tmp_path}/cut.tar")
        keys = read["images"] | "K" >> beam.Map(lambda r: r.key)
        errors = read["errors"] | "E" >> beam.Map(lambda e: (e.key, e.stage))
        assert_that(keys, equal_to(["m0", "m1", "m2"]), label="images")
        assert_that(errors, equal_to([("m3", "read")]), label="errors")


def test_tar_scan_failure_other_than_a_broken_shard_fails_loudly(tmp_path, monkeypatch):
    """A broken shard is data (an error row); any other failure is a fault that must fail the bundle."""
    write_tar(tmp_path / "s.tar", [("a.jpg", b"A")])

    def explode(*_):
        raise MemoryError("not a shard problem")

    monkeypatch.setattr(files, "open_read", explode)
    with pytest.raises(MemoryError):
        scan_tar_keys(str(tmp_path / "s.tar"))
    with pytest.raises(MemoryError):
        list(read_tar_records(str(tmp_path / "s.tar")))


def test_key_scan_sees_compressed_shards_whatever_their_name_and_reader_checks_the_count(tmp_path):
    """A gzip stream named `.tar` is read by the reader (r|*): the scan must see its keys too, and a
    reader that finds more image members than the scan saw refuses to go on."""
    import gzip

    from pipeline.elements import ScanMismatch

    write_tar(tmp_path / "plain.tar", [("a.jpg", b"A"), ("b.json", b"{}"), ("c.png", b"C")])
    (tmp_path / "zipped.tar").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    assert scan_tar_keys(str(tmp_path / "zipped.tar")) == scan_tar_keys(str(tmp_path / "plain.tar")) == ["a", "c"]
    assert [r.key for r in read_tar_records(str(tmp_path / "zipped.tar"), scanned=2)] == ["a", "c"]
    with pytest.raises(ScanMismatch, match="saw 1 image members"):
        list(read_tar_records(str(tmp_path / "zipped.tar"), scanned=1))


def test_one_member_is_found_by_its_name(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.jpg", b"A"), ("dir/b.c.png", b"B")])
    assert read_tar_member(str(tmp_path / "s.tar"), "dir/b.c.png") == b"B"
    with pytest.raises(FileNotFoundError, match="'b.png' is not in"):
        read_tar_member(str(tmp_path / "s.tar"), "b.png")
