"""Shared fixtures: a small real backbone saved to a weights file, and the input zoo on disk."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.helpers.runs import N_SHARDS, PER_SHARD, TEST_SIZE


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Once TensorFlow and Keras are loaded, move the objects alive then (the libraries' own, some
    400,000) out of the cyclic garbage collector's sight (gc.freeze): every later full collection,
    clear_session's included, then skips them, about 0.5 s each on the CI machine. After the test's
    fixtures are torn down (trylast), so no model is kept; done once."""
    import gc
    import sys

    if not gc.get_freeze_count() and "tensorflow" in sys.modules and "keras" in sys.modules:
        gc.collect()
        gc.freeze()


_session_status: list[int] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _session_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """The suite's status is pytest's, never -6: with the summary printed and pytest's own work done, leave
    before C++ teardown, where Arrow's thread pools can abort a finished process (apache/arrow#34314),
    as `featurize` itself does (pipeline/__main__.py)."""
    import sys

    if _session_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session_status[0])


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory):
    """Random MobileNetV3Small notop weights saved to a file, so every worker loads the same model."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(TEST_SIZE, TEST_SIZE, 3))
    path = tmp_path_factory.mktemp("weights") / "mobilenetv3small-notop.weights.h5"
    model.save_weights(str(path))
    return str(path)


@pytest.fixture(scope="module")
def vgg_notop():
    """VGG16 notop with seeded random weights, for the legacy weights files written from it."""
    from tests.helpers.legacy_weights import seeded_vgg16

    return seeded_vgg16()


@pytest.fixture(scope="session")
def zoo_samples():
    from tests.helpers.samples import zoo

    return zoo()


@pytest.fixture(scope="session")
def zoo_folder(tmp_path_factory, zoo_samples):
    from tests.helpers.samples import write_folder

    root = tmp_path_factory.mktemp("zoo-folder")
    write_folder(root, zoo_samples)
    return root


@pytest.fixture(scope="session")
def zoo_shards(tmp_path_factory, zoo_samples):
    from tests.helpers.samples import write_tar_shards

    root = tmp_path_factory.mktemp("zoo-shards")
    write_tar_shards(root, zoo_samples, n_shards=3)
    return root


@pytest.fixture(scope="session")
def numbered(tmp_path_factory):
    """6 tar shards of 10 small JPEGs, one corrupt image and one key repeated across two shards;
    and the same images as a folder tree. Returns (shard glob, folder)."""
    import tarfile

    from tests.helpers.samples import _add_member, _encode, _rgb

    root = tmp_path_factory.mktemp("numbered")
    (root / "shards").mkdir()
    folder = root / "folder"
    for shard in range(N_SHARDS):
        with tarfile.open(root / "shards" / f"part-{shard:04d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                index = shard * PER_SHARD + i
                name = f"s{shard}/img{index:03d}.jpg"
                data = b"\xff\xd8 not a jpeg" if index == 17 else _encode(_rgb(40 + index % 7, 36, index), "JPEG")
                if (shard, i) == (4, 9):
                    name = "s0/img000.jpg"  # the same sample key as the first member of shard 0
                _add_member(tar, name, data)
                path = folder / f"d{shard}" / f"img{index:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return str(root / "shards" / "part-*.tar"), folder


@pytest.fixture(scope="session")
def numbered_reference(numbered, small_weights, tmp_path_factory):
    """Uninterrupted in-memory Parquet runs over `numbered` with tests/job/test_resume.py's flags, made at most
    once per layout in a session and shared by the resume and the input-format tests (read only):
    reference(layout) -> (output folder, {key: vector}, manifest), layout "tar" or "files"."""
    from pipeline.job.launch import run
    from tests.helpers.crash import read_store
    from tests.helpers.runs import IN_MEMORY, featurize_args

    shards, folder = numbered
    made = {}

    def reference(layout: str):
        if layout not in made:
            out = tmp_path_factory.mktemp(f"reference-{layout}") / "out"
            manifest = run(featurize_args(shards if layout == "tar" else folder, out, small_weights, "parquet",
                                          *IN_MEMORY))
            made[layout] = out, read_store(out, "parquet"), manifest
        return made[layout]

    return reference


@pytest.fixture
def fresh_keras():
    """Free each big model after its test: all 40 kept alive would need many GiB."""
    yield
    import gc
    import inspect

    import keras

    keras.backend.clear_session()  # Keras >= 3.5 runs gc.collect() itself (free_memory=True)
    if "free_memory" not in inspect.signature(keras.backend.clear_session).parameters:
        gc.collect()  # an older Keras: collect here (a second full collection costs ~0.5 s)


@pytest.fixture(scope="session")
def tfds_numbered(numbered, tmp_path_factory):
    """The numbered folder's JPEGs written by a TensorFlow Datasets builder (tests/helpers/dataset_tools.py):
    split `train` the first 40 in key order, `test` the other 20, `image/filename` the folder key.
    Returns (version folder, [(key, bytes)] in key order)."""
    from tests.helpers.dataset_tools import write_tfds

    _, folder = numbered
    keys = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.jpg"))
    examples = [(key, str(folder / key)) for key in keys]
    version = write_tfds(tmp_path_factory.mktemp("tfds"), {"train": examples[:40], "test": examples[40:]})
    return version, [(key, (folder / key).read_bytes()) for key in keys]


@pytest.fixture(scope="session")
def hub_presets(tmp_path_factory):
    """{family: folder} of tiny keras-hub presets written by keras-hub's own save_to_preset."""
    from tests.helpers.hub_presets import BUILDERS, save_tiny_preset

    root = tmp_path_factory.mktemp("presets")
    return {family: save_tiny_preset(family, str(root / family)) for family in BUILDERS}


@pytest.fixture(scope="session")
def clip_store(hub_presets, tmp_path_factory):
    """A store of the tiny CLIP preset over 10 random 64 px PNGs, made by two local worker processes with a
    featurize cache of their own: {source, out, manifest, cache}."""
    from tests.helpers.hub_presets import hub_run, write_photos
    from tests.helpers.runs import LOCAL

    root = tmp_path_factory.mktemp("clip-run")
    source = write_photos(str(root / "photos"), (64, 64))
    cache = root / "cache"
    previous = os.environ.get("FEATURIZE_CACHE")
    os.environ["FEATURIZE_CACHE"] = str(cache)  # the spawned workers inherit it
    try:
        manifest = hub_run(source, root / "out", hub_presets["clip"], *LOCAL)
    finally:
        if previous is None:
            os.environ.pop("FEATURIZE_CACHE")
        else:
            os.environ["FEATURIZE_CACHE"] = previous
    return {"source": source, "out": str(root / "out"), "manifest": manifest, "cache": str(cache)}


@pytest.fixture(scope="session")
def class_index(tmp_path_factory):
    """--class-index: a class index in Keras's format (Keras's own cannot be downloaded here): 1000 distinct names."""
    path = tmp_path_factory.mktemp("index") / "classes.json"
    import json

    path.write_text(json.dumps({str(i): [f"n{i:08d}", f"class_{i}_{'ab'[i % 2]}"] for i in range(1000)}))
    return str(path)


@pytest.fixture
def keras_class_index(class_index, monkeypatch):
    """Keras's decode_predictions reading the same index (its module global, as after its own load)."""
    import json

    from keras.src.applications import imagenet_utils

    with open(class_index) as handle:
        monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", json.load(handle))
    return imagenet_utils.decode_predictions
