"""The sample zoo keeps its promises (checked with the real decoder)."""

from __future__ import annotations

import json
import tarfile

import pytest

from pipeline.images import DECODE_ERRORS, DecodeSpec, decode_image, is_image_name

try:  # works whether or not tests/ is a package
    from tests.helpers.samples import BOMB_MAX_PIXELS, Sample, write_folder, write_tar_shards, webdataset_key, zoo
except ImportError:  # pragma: no cover - depends on how pytest was started
    from samples import BOMB_MAX_PIXELS, Sample, write_folder, write_tar_shards, webdataset_key, zoo

SPEC = DecodeSpec(height=8, width=8, max_pixels=BOMB_MAX_PIXELS)
ZOO = zoo()


@pytest.mark.parametrize("sample", [s for s in ZOO if s.valid], ids=lambda s: s.name)
def test_valid_sample_decodes_with_promised_size(sample):
    array, original = decode_image(sample.data, SPEC)
    assert array.shape == (8, 8, 3)
    assert original == (sample.width, sample.height)
    assert sample.width * sample.height <= BOMB_MAX_PIXELS
    assert max(sample.width, sample.height) <= 64 or sample.name == "panorama.jpg"


@pytest.mark.parametrize("sample", [s for s in ZOO if not s.valid], ids=lambda s: s.name)
def test_invalid_sample_raises(sample):
    assert sample.width is None and sample.height is None
    with pytest.raises(DECODE_ERRORS):  # what a decode error row is made of, never another exception
        decode_image(sample.data, SPEC)


def test_bomb_is_only_a_bomb_under_the_limit():
    bomb = next(s for s in ZOO if s.name == "bomb.png")
    assert len(bomb.data) < 50_000
    decode_image(bomb.data, DecodeSpec(height=8, width=8, max_pixels=None))  # a real image otherwise


def test_zoo_covers_the_promised_cases():
    names = {s.name for s in ZOO}
    assert {"ünïcødé/фото.jpg", "a.b.c.jpg", "UPPER.JPG", "sub/dir/cmyk.jpg", "empty.png"} <= names
    assert len(names) == len(ZOO)
    assert sum(not s.valid for s in ZOO) == 5
    assert all(is_image_name(s.name) for s in ZOO)


def test_zoo_is_deterministic_and_distinct():
    again = zoo()
    assert [s.data for s in again] == [s.data for s in ZOO]
    assert len({s.data for s in ZOO}) == len(ZOO)


def test_webdataset_keys():
    assert webdataset_key("dir/a.b.jpg") == "dir/a"
    assert webdataset_key("a.b.c.jpg") == "a"
    assert webdataset_key("x/y/UPPER.JPG") == "x/y/UPPER"
    keys = [webdataset_key(s.name) for s in ZOO]
    assert len(set(keys)) == len(keys)


def test_write_folder(tmp_path):
    write_folder(tmp_path, ZOO)
    for sample in ZOO:
        assert (tmp_path / sample.name).read_bytes() == sample.data


def test_write_tar_shards(tmp_path):
    paths = write_tar_shards(tmp_path, ZOO, n_shards=3, prefix="train")
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    seen = {}
    for shard, path in enumerate(paths):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            # Pairs: image member, then its sidecar with the same key.
            assert len(members) % 2 == 0
            for image, sidecar in zip(members[::2], members[1::2]):
                assert sidecar.name == webdataset_key(image.name) + ".json"
                assert json.loads(tar.extractfile(sidecar).read()) == {"name": image.name}
                seen[image.name] = (shard, tar.extractfile(image).read())
    assert {name: data for name, (_, data) in seen.items()} == {s.name: s.data for s in ZOO}
    assert [seen[s.name][0] for s in ZOO] == [i % 3 for i in range(len(ZOO))]  # round-robin


def test_write_tar_shards_rejects_colliding_keys(tmp_path):
    clash = [Sample("x/rgb.jpg", b"1", False, None, None), Sample("x/rgb.v2.png", b"2", False, None, None)]
    with pytest.raises(ValueError, match="x/rgb"):
        write_tar_shards(tmp_path, clash, n_shards=1)
