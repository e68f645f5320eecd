"""Inputs: brace expansion, keys, input resolution, listing (skipped files, sniffing), tar streaming;
and ReadImages, the library transform built on them."""
import io
import tarfile

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.elements import ImageRecord
from pipeline.inputs.listing import (expand_braces, file_key, input_layout, list_inputs, read_tar_records, resolve_input,
                              webdataset_key)
from pipeline.job.units import shard_unit_id
from pipeline.transforms import ReadImages


def test_expand_braces_numeric_range_keeps_zero_padding():
    assert expand_braces("s/train-{000000..000003}.tar") == [f"s/train-00000{i}.tar" for i in range(4)]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]


def test_expand_braces_lists_nested_and_literal():
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("x{y}z") == ["x{y}z"]
    assert expand_braces("plain/path") == ["plain/path"]


@pytest.mark.parametrize("member, key", [
    ("a.jpg", "a"), ("dir/a.b.jpg", "dir/a"), ("./dir/sub/x.y.z.png", "dir/sub/x"), ("noext", "noext"),
])
def test_webdataset_key_cuts_at_first_dot_of_base_name(member, key):
    assert webdataset_key(member) == key


def test_resolve_input_layouts(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    folder = resolve_input(str(tmp_path / "imgs"))
    assert folder.layout == "files" and folder.patterns == ((f"{tmp_path}/imgs/**", f"{tmp_path}/imgs"),)
    glob = resolve_input(f"{tmp_path}/imgs/*.jpg")
    assert glob.patterns == ((f"{tmp_path}/imgs/*.jpg", f"{tmp_path}/imgs"),)
    single = resolve_input(f"{tmp_path}/imgs/a.jpg")
    assert single.patterns == ((f"{tmp_path}/imgs/a.jpg", f"{tmp_path}/imgs"),)
    tars = resolve_input(f"{tmp_path}/s-{{0..2}}.tar")
    assert tars.layout == "tar" and [p for p, _ in tars.patterns] == [f"{tmp_path}/s-{i}.tar" for i in range(3)]
    with pytest.raises(ValueError, match="mixes"):
        resolve_input(f"{tmp_path}/{{a.tar,b.jpg}}")


@pytest.mark.parametrize("path, layout", [
    ("tfds/mnist/3.0.1/mnist-train.tfrecord-00000-of-00001", "tfrecord"),  # TensorFlow Datasets' own names
    ("mnist-train.tfrecord-00003-of-00016.gz", "tfrecord"), ("mnist-train.tfrecord-*", "tfrecord"),
    ("mnist-train.tfrecord-*-of-00016", "tfrecord"), ("a.TFRecords-0000[0-3]-of-00004", "tfrecord"),
    ("hub/data/train-00000-of-00002.parquet", "parquet"),                   # Hugging Face Hub shards
    ("saved/data-00000-of-00001.arrow", "arrow"), ("saved/*/data-*.arrow", "arrow"),
    ("notes.tfrecord-info.txt", "list"), ("photo.tfrecord-1.jpg", "files"), ("photos/", "files"),
])
def test_shard_layouts_by_name(path, layout):
    assert input_layout(path) == layout


def test_dataset_folders_resolve_to_their_shards(tmp_path):
    for folder, marker in (("one", "state.json"), ("dict", "dataset_dict.json"), ("tfds", "features.json")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / marker).write_text("{}")
    assert resolve_input(str(tmp_path / "one")).patterns == ((f"{tmp_path}/one/data-*.arrow", f"{tmp_path}/one"),)
    spec = resolve_input(f"{tmp_path}/dict/")
    assert spec.layout == "arrow" and spec.patterns == ((f"{tmp_path}/dict/*/data-*.arrow", f"{tmp_path}/dict"),)
    assert resolve_input(str(tmp_path / "tfds")).patterns == ((f"{tmp_path}/tfds/*.tfrecord-*", f"{tmp_path}/tfds"),)
    assert shard_unit_id("arrow", f"{tmp_path}/one/data-00000-of-00001.arrow").startswith("arrow-data-00000-of-00001-")


def test_common_root_keeps_scheme_slashes():
    from pipeline.inputs.listing import _common_root

    assert _common_root(["gs://b/photos/cats", "gs://b/photos/dogs/x"]) == "gs://b/photos"
    assert _common_root(["/data/a/", "/data/a/b"]) == "/data/a"


def test_several_folders_share_one_root_so_keys_stay_unique(tmp_path):
    for folder in ("cats", "dogs", "cats/sub"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "001.jpg").write_bytes(folder.encode())
    with TestPipeline(runner="FnApiRunner") as p:
        # cats/sub is matched by two patterns: it must be read once, under one key
        read = p | ReadImages(f"{tmp_path}/{{cats,dogs,cats/sub}}")
        keys = read["images"] | beam.Map(lambda r: (r.key, r.data))
        assert_that(keys, equal_to([("cats/001.jpg", b"cats"), ("dogs/001.jpg", b"dogs"),
                                    ("cats/sub/001.jpg", b"cats/sub")]))


def test_listing_records_skipped_files_and_sniffs_files_without_extension(tmp_path):
    import io as _io

    from PIL import Image

    png = _io.BytesIO()
    Image.new("RGB", (3, 2)).save(png, "PNG")
    (tmp_path / "notes.txt").write_text("not an input")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "x.PNG").write_bytes(b"x")
    (tmp_path / "IMG_0001").write_bytes(png.getvalue())  # a camera's file without an extension
    (tmp_path / "README").write_text("no extension, not an image")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    listing = list_inputs(resolve_input(str(tmp_path)))
    assert [key for key, _, _ in listing.inputs] == ["IMG_0001", "deep/er/x.PNG"]
    assert sorted(listing.skipped) == [("README", ""), ("clip.mp4", ".mp4"), ("notes.txt", ".txt")]
    assert listing.skipped_by_extension() == {"(none)": 1, ".mp4": 1, ".txt": 1}
    assert listing.bytes == len(png.getvalue()) + 1


@pytest.mark.parametrize("absolute", [False, True])
def test_roots_sharing_relative_paths_give_distinct_keys(tmp_path, monkeypatch, absolute):
    """`{cats,dogs}` (relative, no common root) and `{/x/one/photos,/x/two/photos}` (absolute): one key per file."""
    folders = ("one/photos", "two/photos") if absolute else ("cats", "dogs")
    for folder in folders:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "001.jpg").write_bytes(folder.encode())
    monkeypatch.chdir(tmp_path)
    spec = f"{{{tmp_path}/{folders[0]},{tmp_path}/{folders[1]}}}" if absolute else "{cats,dogs}"
    listing = list_inputs(resolve_input(spec))
    assert [key for key, _, _ in listing.inputs] == [f"{folders[0]}/001.jpg", f"{folders[1]}/001.jpg"]
    assert not listing.duplicates
    # unrelated absolute roots have no common root: the whole path is the key
    assert file_key("/data/a/001.jpg", "") == "data/a/001.jpg" != file_key("/mnt/b/001.jpg", "")


def _tar(path, members):
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


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


def test_read_tar_shards_streams_samples_and_reports_missing_and_duplicate(tmp_path):
    _tar(tmp_path / "s-0.tar", [("x/a.b.jpg", b"A"), ("x/a.b.json", b"{}"), ("c.png", b"C"), ("dup.jpg", b"D0"),
                                ("c.png", b"C again")])  # tar allows a member name twice
    _tar(tmp_path / "s-1.tar", [("d.jpg", b"D"), ("dup.png", b"D1")])
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
    _tar(tmp_path / "whole.tar", members)
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
    from pipeline.inputs import listing as sources

    _tar(tmp_path / "s.tar", [("a.jpg", b"A")])

    def explode(*_):
        raise MemoryError("not a shard problem")

    monkeypatch.setattr(sources, "_open_raw", explode)
    with pytest.raises(MemoryError):
        sources.scan_tar_keys(str(tmp_path / "s.tar"))
    with pytest.raises(MemoryError):
        list(read_tar_records(str(tmp_path / "s.tar")))


def test_read_uri_reads_files_and_tar_members(tmp_path):
    from pipeline.inputs.listing import read_uri

    (tmp_path / "odd#dir").mkdir()
    _tar(tmp_path / "odd#dir" / "s.tar", [("a.jpg", b"A"), ("b#1.jpg", b"B")])
    (tmp_path / "plain.jpg").write_bytes(b"P")
    assert read_uri(f"{tmp_path}/plain.jpg") == b"P"
    assert read_uri(f"{tmp_path}/odd#dir/s.tar#b#1.jpg") == b"B"
    with pytest.raises(FileNotFoundError):
        read_uri(f"{tmp_path}/odd#dir/s.tar#missing.jpg")


def test_key_scan_sees_compressed_shards_whatever_their_name_and_reader_checks_the_count(tmp_path):
    """A gzip stream named `.tar` is read by the reader (r|*): the scan must see its keys too, and a
    reader that finds more image members than the scan saw refuses to go on."""
    import gzip

    from pipeline.elements import ScanMismatch
    from pipeline.inputs.listing import scan_tar_keys

    _tar(tmp_path / "plain.tar", [("a.jpg", b"A"), ("b.json", b"{}"), ("c.png", b"C")])
    (tmp_path / "zipped.tar").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    assert scan_tar_keys(str(tmp_path / "zipped.tar")) == scan_tar_keys(str(tmp_path / "plain.tar")) == ["a", "c"]
    assert [r.key for r in read_tar_records(str(tmp_path / "zipped.tar"), scanned=2)] == ["a", "c"]
    with pytest.raises(ScanMismatch, match="saw 1 image members"):
        list(read_tar_records(str(tmp_path / "zipped.tar"), scanned=1))


def test_one_file_spelled_two_ways_is_listed_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tar(tmp_path / "a.tar", [("x.jpg", b"X")])
    tars = list_inputs(resolve_input(f"{{a.tar,{tmp_path}/a.tar,./a.tar}}"))
    assert [uri for _, uri, _ in tars.inputs] == [str(tmp_path / "a.tar")]  # absolute, whichever the spelling
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.jpg").write_bytes(b"X")
    files = list_inputs(resolve_input(f"{{p/x.jpg,{tmp_path}/p/x.jpg}}"))
    assert len(files.inputs) == 1 and not files.duplicates


def test_transient_failures_are_told_apart_from_unreadable_inputs():
    import errno

    from apache_beam.io.filesystem import BeamIOError

    from pipeline.inputs.retries import is_transient

    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(BeamIOError("Match operation failed", {"gs://b/x": "HttpError 503 Service Unavailable"}))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(tarfile.ReadError("unexpected end of data"))


@pytest.mark.parametrize("pattern, layout, keys", [("*.jpg", "files", ["a.jpg", "b.jpg"]),
                                                   ("*.tar", "tar", ["s.tar"]),
                                                   ("*/*.jpg", "files", ["x/a.jpg", "y/a.jpg"]),
                                                   ("[xy]/a.jpg", "files", ["x/a.jpg", "y/a.jpg"])])
def test_a_glob_without_a_folder_matches_in_the_current_directory(pattern, layout, keys, tmp_path, monkeypatch):
    """Beam's local filesystem matches nothing for `*.tar` or `*/*.jpg`; featurize makes a local input
    absolute first, so every uri also names its image from any other folder."""
    for name in ("a.jpg", "b.jpg", "s.tar", "notes.txt", "x/a.jpg", "y/a.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    listing = list_inputs(resolve_input(pattern))
    assert listing.layout == layout and [path for _, path, _ in listing.inputs] == [str(tmp_path / k) for k in keys]
    if layout == "files":  # (a tar's listing is of shards; its keys come from the members)
        assert [key for key, _, _ in listing.inputs] == keys
