"""pipeline.inputs.listing: brace expansion, input resolution (dataset folders too), keys of plain
files, listing (skipped files, sniffing, one listing per file however it is spelled)."""
import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.inputs.listing import expand_braces, file_key, list_inputs, resolve_input
from pipeline.job.units import shard_unit_id
from pipeline.transforms import ReadImages
from tests.helpers.tars import write_tar


def test_expand_braces_numeric_range_keeps_zero_padding():
    assert expand_braces("s/train-{000000..000003}.tar") == [f"s/train-00000{i}.tar" for i in range(4)]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]


def test_expand_braces_lists_nested_and_literal():
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("x{y}z") == ["x{y}z"]
    assert expand_braces("plain/path") == ["plain/path"]


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
    assert [key for key, _, _ in listing.inputs()] == ["IMG_0001", "deep/er/x.PNG"]
    assert sorted(listing.skipped()) == [("README", ""), ("clip.mp4", ".mp4"), ("notes.txt", ".txt")]
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
    assert [key for key, _, _ in listing.inputs()] == [f"{folders[0]}/001.jpg", f"{folders[1]}/001.jpg"]
    assert listing.duplicate_count == 0
    # unrelated absolute roots have no common root: the whole path is the key
    assert file_key("/data/a/001.jpg", "") == "data/a/001.jpg" != file_key("/mnt/b/001.jpg", "")


def test_one_file_spelled_two_ways_is_listed_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tar(tmp_path / "a.tar", [("x.jpg", b"X")])
    tars = list_inputs(resolve_input(f"{{a.tar,{tmp_path}/a.tar,./a.tar}}"))
    assert [uri for _, uri, _ in tars.inputs()] == [str(tmp_path / "a.tar")]  # absolute, whichever the spelling
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.jpg").write_bytes(b"X")
    files = list_inputs(resolve_input(f"{{p/x.jpg,{tmp_path}/p/x.jpg}}"))
    assert files.count == 1 and files.duplicate_count == 0


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
    assert listing.layout == layout and [path for _, path, _ in listing.inputs()] == [str(tmp_path / k) for k in keys]
    if layout == "files":  # (a tar's listing is of shards; its keys come from the members)
        assert [key for key, _, _ in listing.inputs()] == keys


def test_a_listing_spilled_to_disk_equals_one_sorted_in_memory(tmp_path):
    """A million files are sorted in spilled runs (pipeline.external_sort); 3 records per run here."""
    names = [f"{folder}/{i:03d}.jpg" for folder in ("b", "a/deep", "c") for i in range(9, -1, -1)]
    for name in names + ["a/notes.txt", "c/clip.mp4"]:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(name.encode())
    listed = "\n".join(str(tmp_path / "in" / name) for name in names + names[:4]) + "\n"
    (tmp_path / "l.txt").write_text(listed)
    folder, path_list = str(tmp_path / "in"), str(tmp_path / "l.txt")
    spilled = {}
    for spec in (folder, path_list):
        whole, spilled[spec] = (list_inputs(resolve_input(spec), chunk=chunk) for chunk in (10**6, 3))
        assert list(spilled[spec].inputs()) == list(whole.inputs()) and spilled[spec].count == len(names) == whole.count
        assert [key for key, _, _ in spilled[spec].inputs()] == sorted(names)
        assert list(spilled[spec].duplicates()) == list(whole.duplicates())
        assert list(spilled[spec].skipped()) == list(whole.skipped())
    assert [e.key for e in spilled[path_list].duplicates()] == sorted(names[:4])  # the list repeats 4 paths
    assert list(spilled[path_list].skipped()) == []
    assert list(spilled[folder].skipped()) == [("a/notes.txt", ".txt"), ("c/clip.mp4", ".mp4")]


def test_brace_prefixes_on_an_object_store_are_listed_at_once(tmp_path):
    """`gs://b/img/{00..ff}/` is 256 listings of a prefix each: they are requested together, not
    one after another (slow://: Beam's local filesystem with 10 ms per call, counting calls in flight)."""
    from tests.helpers import slow_fs

    prefixes = [f"{i:02d}" for i in range(8)]
    for prefix in prefixes:
        (tmp_path / prefix).mkdir()
        for name in ("a.jpg", "b.png"):
            (tmp_path / prefix / name).write_bytes(b"x")
    with slow_fs.latency(0.01):
        listing = list_inputs(resolve_input(slow_fs.slow_path(f"{tmp_path}/{{00..07}}")))
        peak = slow_fs.stats()["peak_in_flight"]
    assert [key for key, _, _ in listing.inputs()] == [f"{p}/{n}" for p in prefixes for n in ("a.jpg", "b.png")]
    assert all(uri.startswith("slow://") for _, uri, _ in listing.inputs())
    assert peak > 1, "the prefixes were listed one after another"


def test_overlapping_patterns_count_a_skipped_file_and_a_missing_shard_once(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    for name in ("a/x.jpg", "a/notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    listing = list_inputs(resolve_input(f"{tmp_path}/d/{{a,a/*}}"))
    assert listing.count == 1 and listing.duplicate_count == 0
    assert list(listing.skipped()) == [("notes.txt", ".txt")] and listing.skipped_count == 1
    assert listing.skipped_by_extension() == {".txt": 1}
    (tmp_path / "sh").mkdir()
    write_tar(tmp_path / "sh" / "s1.tar", [("x.jpg", b"X")])
    shards = list_inputs(resolve_input(f"{tmp_path}/sh/s{{1,3,3}}.tar"))
    assert shards.missing == [str(tmp_path / "sh" / "s3.tar")] and shards.count == 2
