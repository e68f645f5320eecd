"""Shared fixtures: a small real backbone saved to a weights file, and the input zoo on disk."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Small enough for a 2-core CI machine, big enough to exercise every stage.
TEST_MODEL = "MobileNetV3Small"
TEST_SIZE = 48


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


@pytest.fixture(scope="session")
def zoo_samples():
    from tests.samples import zoo

    return zoo()


@pytest.fixture(scope="session")
def zoo_folder(tmp_path_factory, zoo_samples):
    from tests.samples import write_folder

    root = tmp_path_factory.mktemp("zoo-folder")
    write_folder(root, zoo_samples)
    return root


@pytest.fixture(scope="session")
def zoo_shards(tmp_path_factory, zoo_samples):
    from tests.samples import write_tar_shards

    root = tmp_path_factory.mktemp("zoo-shards")
    write_tar_shards(root, zoo_samples, n_shards=3)
    return root
