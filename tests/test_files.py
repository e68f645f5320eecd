"""pipeline.files: local paths read with the standard library exactly as Beam's filesystems read them;
paths with a scheme go to Beam."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline import files


@pytest.mark.parametrize("path, local", [("/data/out", True), ("out", True), ("./a/b.parquet", True),
                                         ("gs://bucket/out", False), ("s3://b/k", False),
                                         ("hdfs://nn/x", False), (" gs://bucket/out", False)])
def test_a_path_is_local_unless_it_has_a_scheme_as_beam_decides(path, local):
    assert files.is_local(path) is local
    assert (FileSystems.get_scheme(path) is None) is local


def test_listing_matches_beams_local_filesystem(tmp_path):
    (tmp_path / "features").mkdir()
    for name in ("b.parquet", "a.parquet", "c.h5", ".hidden.parquet", "sub.parquet/d.parquet"):
        (tmp_path / "features" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "features" / name).write_bytes(b"x")
    for pattern in ("features/*.parquet", "features/*", "features/?.parquet", "features/[ab].*", "nothing/*",
                    "features/**", "**/d.parquet", "features/a**", "*/sub.parquet/*", "features/sub.parquet"):
        full = files.join(str(tmp_path), pattern)
        beam = sorted(m.path for m in FileSystems.match([full])[0].metadata_list)
        assert files.list_paths(full) == beam
    assert [p.rsplit("/", 1)[1] for p in files.list_paths(files.join(str(tmp_path), "features/*"))] == \
        [".hidden.parquet", "a.parquet", "b.parquet", "c.h5"]  # a folder (sub.parquet) is not a file
    assert files.join(str(tmp_path), "features", "a.parquet") == FileSystems.join(str(tmp_path), "features", "a.parquet")


def test_reads_are_raw_bytes_and_json(tmp_path):
    packed = gzip.compress(b"payload")
    (tmp_path / "x.gz").write_bytes(packed)
    with files.open_read(str(tmp_path / "x.gz")) as handle:
        assert handle.read() == packed  # as stored: no decompression by suffix
    (tmp_path / "m.json").write_text(json.dumps({"rows": 3}))
    assert files.read_json(str(tmp_path / "m.json")) == {"rows": 3}
    assert files.exists(str(tmp_path / "m.json")) and not files.exists(str(tmp_path / "n.json"))


def test_a_read_can_decompress_by_suffix_as_beam_does(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"payload"))
    (tmp_path / "plain.tfrecord").write_bytes(b"as stored")
    with files.open_read(str(tmp_path / "x.gz"), decompress=True) as handle:
        assert handle.read() == b"payload"
    with files.open_read(str(tmp_path / "plain.tfrecord"), decompress=True) as handle:
        assert handle.read() == b"as stored"  # no compression suffix: read as it is


def test_a_uri_goes_to_beams_filesystems():
    # No filesystem for this scheme is installed: Beam's own refusal proves the call went to Beam.
    with pytest.raises(ValueError, match="Unable to get filesystem from specified path"):
        files.exists("nosuchscheme://bucket/manifest.json")


def test_read_iter_keeps_a_bounded_number_of_reads_ahead_of_its_consumer():
    """Resume planning reads 10^5 journal entries holding every key: only a window may be in memory."""
    import threading

    started, lock = [], threading.Lock()

    def read(path):
        with lock:
            started.append(path)
        return path

    paths = [f"p{index}" for index in range(1000)]
    results = files.read_iter(read, paths, threads=4)
    taken = [next(results) for _ in range(10)]
    time.sleep(0.2)  # whatever the pool could start, it has started by now
    assert taken == paths[:10]
    assert 10 < len(started) <= 10 + 2 * 4 + 1
    assert list(results) == paths[10:]


def test_a_folder_is_listed_as_beam_lists_it_while_it_is_walked(tmp_path):
    """The launcher walks a local folder with os.scandir (streamed) where Beam's match of `folder/**`
    would return one list: the same files, hidden ones and symlinked files included, a symlinked
    folder not entered, a broken link left out."""
    from pipeline.inputs.listing import _walk_local

    for name in ("a.jpg", ".hidden.jpg", "d/b.jpg", "d/e/c.png", "other/x.jpg"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(name.encode())
    (tmp_path / "in" / "link.jpg").symlink_to(tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "in" / "other", target_is_directory=True)
    (tmp_path / "in" / "d" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    folder = str(tmp_path / "in")
    beam = sorted((m.path, m.size_in_bytes) for m in FileSystems.match([folder + "/**"])[0].metadata_list)
    assert sorted(_walk_local(folder)) == beam and len(beam) == 6


def test_upload_copies_a_local_file_to_a_local_folder_or_any_beam_filesystem(tmp_path):
    from tests.helpers import slow_fs

    (tmp_path / "local.bin").write_bytes(b"\x00plan" * 1000)
    for destination in (str(tmp_path / "new" / "dir" / "a.bin"), slow_fs.slow_path(str(tmp_path / "b.bin"))):
        files.upload(str(tmp_path / "local.bin"), destination)
        with files.open_read(destination) as handle:
            assert handle.read() == b"\x00plan" * 1000


SCRATCH_PROCESS = """
import sys, os, signal
from pipeline import files

class Owner:
    pass

owner = Owner()
folder = files.scratch_folder(owner, "listing")
open(os.path.join(folder, "run-00000"), "wb").write(b"spill" * 1000)
print(folder, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 does: no finalizer, no exit function
sys.stdin.read()  # "hold": alive until the test closes stdin
"""


def scratch_process(tmp_path, how: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRATCH_PROCESS, how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(tmp_path)))
    return proc, proc.stdout.readline().strip()


def test_scratch_of_a_killed_process_is_removed_by_the_next_one_and_a_live_one_s_stays(tmp_path):
    killed, abandoned = scratch_process(tmp_path, "kill")
    assert killed.wait(timeout=60) == -signal.SIGKILL and os.path.isdir(abandoned)
    live, held = scratch_process(tmp_path, "hold")
    try:
        # The live process's first scratch folder swept the killed one's; its own stays while it lives.
        assert not os.path.exists(abandoned) and os.path.isdir(held)
        (tmp_path / "featurize-notes").mkdir()  # not a scratch folder (no owner lock): never touched
        assert files.remove_abandoned_scratch(str(tmp_path)) == []
        assert os.path.isdir(held) and (tmp_path / "featurize-notes").is_dir()
    finally:
        live.communicate("", timeout=60)
    assert live.returncode == 0 and not os.path.exists(held)  # a normal exit removes its own
