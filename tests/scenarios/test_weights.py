"""Runs with weights files: staged through the machine's cache and checked against --weights-sha256; a
Theano-era legacy file gives the Keras 3 file's vectors, and one that does not fit stops the run before
it starts, naming the layer."""
import glob
import hashlib
import os

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.job.config import ConfigError
from tests.helpers.legacy_weights import SIZE, weighted, write_nb_layers


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURIZE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_run_stages_weights_through_the_cache_and_checks_the_given_digest(
        zoo_folder, small_weights, tmp_path, cache):
    from tests.helpers.runs import featurize

    digest = hashlib.sha256(open(small_weights, "rb").read()).hexdigest()
    manifest = featurize(zoo_folder, tmp_path / "out", small_weights, "--weights-sha256", digest)
    assert manifest["fingerprint"]["weights_sha256"] == digest
    assert (cache / digest / "mobilenetv3small-notop.weights.h5").exists()
    with pytest.raises(ConfigError, match="does not match"):
        featurize(zoo_folder, tmp_path / "out2", small_weights, "--weights-sha256", "f" * 64)


def read_vectors(out) -> dict:
    table = pq.read_table(glob.glob(f"{out}/features/*.parquet"))
    return dict(zip(table.column("key").to_pylist(), np.array(table.column("embedding").to_pylist())))


def test_a_job_with_a_theano_file_gives_the_keras3_files_vectors(vgg_notop, tmp_path, fresh_keras):
    from PIL import Image

    from pipeline.job.launch import run

    source = tmp_path / "in"
    source.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(source / f"{i}.png")
    keras3 = tmp_path / "vgg16.weights.h5"
    vgg_notop.save_weights(str(keras3))
    theano = tmp_path / "vgg16_weights_th_dim_ordering_th_kernels_notop.h5"
    write_nb_layers(vgg_notop, theano, theano_kernels=True, channels_first=True)
    common = ["--input", str(source), "--model", "VGG16", "--image-size", str(SIZE), "--batch-size", "4",
              "--direct_running_mode=in_memory"]
    run([*common, "--output", str(tmp_path / "keras3"), "--weights", str(keras3)])
    run([*common, "--output", str(tmp_path / "theano"), "--weights", str(theano)])
    want, got = read_vectors(tmp_path / "keras3"), read_vectors(tmp_path / "theano")
    assert sorted(got) == ["0.png", "1.png", "2.png"] and got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)

    wrong = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(wrong, "w") as handle:  # block2_conv1 saved with the wrong number of filters
        layers = weighted(vgg_notop)
        handle.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for index, layer in enumerate(layers):
            group = handle.create_group(layer.name)
            group.attrs["weight_names"] = [b"kernel", b"bias"]
            kernel, bias = np.asarray(layer.kernel), np.asarray(layer.bias)
            group.create_dataset("kernel", data=kernel[..., :100] if index == 2 else kernel)
            group.create_dataset("bias", data=bias[:100] if index == 2 else bias)
    with pytest.raises(ConfigError) as error:
        run([*common, "--output", str(tmp_path / "wrong"), "--weights", str(wrong)])
    assert str(error.value) == (
        f"weights {str(wrong)!r} do not fit VGG16 at 32x32 (layer 'block2_conv1' (weighted layer 3 of 13) needs "
        f"weights of shapes (3, 3, 64, 128), (128,), but the file's 'block2_conv1' has (3, 3, 64, 100), (100,)); "
        f"give a weights file saved from VGG16, or --weights imagenet or none")
    assert not (tmp_path / "wrong").exists() or not os.listdir(tmp_path / "wrong")
