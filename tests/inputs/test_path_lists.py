"""Path lists (.txt / .csv / .tsv): what they name, and the keys and duplicates a listing makes of them."""
import pytest

from pipeline.inputs.path_lists import PathListError, read_path_list
from pipeline.inputs.listing import list_inputs, resolve_input


def test_a_txt_list_skips_blanks_and_comments_and_resolves_relative_paths(tmp_path):
    (tmp_path / "lists").mkdir()
    listed = tmp_path / "lists" / "l.txt"
    listed.write_text("# my images\n\n../img/a.jpg\n  /data/b.png  \ngs://bucket/c.jpg\nhttps://example.org/d.jpg\n")
    assert list(read_path_list(str(listed))) == [str(tmp_path / "img" / "a.jpg"), "/data/b.png", "gs://bucket/c.jpg",
                                           "https://example.org/d.jpg"]


@pytest.mark.parametrize("name, text, column", [
    ("l.csv", "url,caption\nhttp://h/a.jpg,\"a, cat\"\nhttp://h/b.jpg,dog\n", None),
    ("l.tsv", "caption\tURL\na, cat\thttp://h/a.jpg\ndog\thttp://h/b.jpg\n", None),
    ("l.csv", "name,src\nx,http://h/a.jpg\ny,http://h/b.jpg\n,\n", "src"),
])
def test_csv_and_tsv_lists_read_the_uri_column(tmp_path, name, text, column):
    (tmp_path / name).write_text(text)
    assert list(read_path_list(str(tmp_path / name), column)) == ["http://h/a.jpg", "http://h/b.jpg"]


@pytest.mark.parametrize("name, text, column, message", [
    ("l.csv", "name,caption\nx,y\n", None, "has no column named uri, url, path.*its columns: name, caption.*--uri-column"),
    ("l.csv", "url,caption\nx,y\n", "link", "uri_column 'link' is not a column of .*its columns: url, caption"),
    ("l.txt", "a.jpg\n", "url", "uri_column 'url' applies to .csv and .tsv lists"),
    ("l.csv", "", None, "is empty"),
])
def test_a_list_that_cannot_be_read_is_one_sentence(tmp_path, name, text, column, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(PathListError, match=message):
        list(read_path_list(str(tmp_path / name), column))


def test_listed_paths_are_keyed_below_their_common_folder_and_repeats_are_duplicates(tmp_path):
    for name in ("cats/1.jpg", "dogs/1.jpg", "dogs/notes.txt"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(b"x")
    (tmp_path / "l.txt").write_text("photos/cats/1.jpg\nphotos/dogs/1.jpg\nphotos/dogs/notes.txt\n"
                                    "photos/cats/1.jpg\nphotos/missing.jpg\n")
    listing = list_inputs(resolve_input(str(tmp_path / "l.txt")))
    assert listing.layout == "files" and listing.root == str(tmp_path / "photos")
    # Every listed path is read, whatever its extension (a list names what to read); a missing one too
    # (it becomes a read error row); a path listed twice is one input and one DuplicateKey row.
    assert [key for key, _, _ in listing.inputs()] == ["cats/1.jpg", "dogs/1.jpg", "dogs/notes.txt", "missing.jpg"]
    assert [(e.key, e.error_type) for e in listing.duplicates()] == [("cats/1.jpg", "DuplicateKey")]
    assert listing.skipped_count == 0 and listing.bytes is None  # list entries are not statted


def test_a_missing_or_empty_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match="input list .*nope.txt' does not exist"):
        list_inputs(resolve_input(str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no paths"):
        list_inputs(resolve_input(str(tmp_path / "empty.txt")))


def test_mixing_layouts_names_both(tmp_path):
    with pytest.raises(ValueError, match="mixes path lists and Parquet shards; give one layout per run"):
        resolve_input(f"{{{tmp_path}/a.txt,{tmp_path}/b.parquet}}")


def test_a_csv_caption_with_a_line_separator_stays_in_its_row_and_lists_stream_across_blocks(tmp_path):
    """csv rows end at a newline only: U+2028 or a form feed inside a caption is not a new row. A list is
    read a block at a time: a line cut by a block's end is joined again."""
    from pipeline.inputs.path_lists import _lines_of

    (tmp_path / "l.csv").write_text('url,caption\nhttp://h/a.jpg,hello\u2028world\r\nhttp://h/b.jpg,"page\x0cbreak"\n',
                                    encoding="utf-8")
    assert list(read_path_list(str(tmp_path / "l.csv"))) == ["http://h/a.jpg", "http://h/b.jpg"]
    text = "".join(f"/data/{index:05d}.jpg\n" for index in range(500)) + "/data/last.jpg"
    (tmp_path / "l.txt").write_text(text)
    assert "".join(_lines_of(str(tmp_path / "l.txt"), block=7)) == text
    assert list(read_path_list(str(tmp_path / "l.txt")))[-2:] == ["/data/00499.jpg", "/data/last.jpg"]
