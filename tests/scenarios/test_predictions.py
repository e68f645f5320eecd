"""--predictions K through whole runs: the top-K columns equal Keras's model.predict + decode_predictions(top=K)
in Parquet and HDF5, and weights without a classifier are refused before the run starts."""
import glob
import re
from collections import Counter

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.job.config import ConfigError
from pipeline.job.launch import run

SIZE = 48
MODEL = "MobileNetV3Small"


@pytest.fixture(scope="module")
def full_model(tmp_path_factory):
    """A seeded full (include_top) MobileNetV3Small and its weights file."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.applications.MobileNetV3Small(include_top=True, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path_factory.mktemp("full") / "full.weights.h5"
    model.save_weights(str(path))
    return model, str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(9)
    for i, size in enumerate([(61, 97), (120, 80), (48, 48), (70, 55), (33, 90)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def featurize(photos, out, weights, class_index, *extra):
    return run(["--input", str(photos), "--output", str(out), "--model", MODEL, "--weights", weights,
                "--image-size", str(SIZE), "--interpolation", "nearest", "--predictions", "5",
                "--class-index", class_index, "--batch-size", "4", "--direct_running_mode=in_memory", *extra])


def test_predictions_equal_keras_predict_and_decode_predictions(full_model, photos, class_index, keras_class_index,
                                                                tmp_path, capsys):
    import keras

    model, weights = full_model
    manifest = featurize(photos, tmp_path / "out", weights, class_index)
    table = pq.read_table(glob.glob(f"{tmp_path}/out/features/*.parquet"))
    schema = table.schema
    for column, value_type in (("predicted_ids", pa.int32()), ("predicted_names", pa.string()),
                               ("predicted_scores", pa.float32())):
        assert (schema.field(column).type.value_type, schema.field(column).type.list_size) == (value_type, 5)
    rows = {row["key"]: row for row in table.to_pylist()}
    keys = sorted(rows)
    assert keys == [f"p{i}.png" for i in range(5)] and manifest["counts"]["rows"] == 5

    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(photos / key, target_size=(SIZE, SIZE),
                                                                    interpolation="nearest")) for key in keys])
    preprocessed = keras.applications.mobilenet_v3.preprocess_input(batch)
    expected = keras_class_index(model.predict(preprocessed, verbose=0), top=5)
    # The embedding is the classifier's input, from the same forward pass.
    classifier_input = keras.Model(model.inputs, model.get_layer("logits").input).predict(preprocessed, verbose=0)
    for key, want, embedding in zip(keys, expected, classifier_input.reshape(len(keys), -1)):
        row = rows[key]
        assert row["predicted_names"] == [name for _, name, _ in want], key
        assert row["predicted_ids"] == [int(wnid[1:]) for wnid, _, _ in want], key  # n00000017 -> class 17
        np.testing.assert_allclose(row["predicted_scores"], [score for _, _, score in want], rtol=1e-5, atol=1e-7)
        got = np.asarray(row["embedding"])
        assert got.shape == embedding.shape
        assert np.linalg.norm(got - embedding) / np.linalg.norm(embedding) < 1e-5, key

    # `featurize inspect` shows the most frequent top-1 classes.
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    for name, count in Counter(rows[key]["predicted_names"][0] for key in keys).items():
        assert re.search(rf"^{re.escape(name)}\s+{count}\s*$", printed, re.MULTILINE), printed

    # `featurize search` shows each neighbour's top class.
    assert main(["search", str(tmp_path / "out"), "--query", "p0.png", "--k", "3", "--exact"]) == 0
    printed = capsys.readouterr().out
    assert "top class" in printed.splitlines()[0]
    assert re.search(rf"\bp0\.png\b.*{re.escape(rows['p0.png']['predicted_names'][0])}|"
                     rf"{re.escape(rows['p0.png']['predicted_names'][0])}\s+p0\.png", printed), printed

    featurize(photos, tmp_path / "h5", weights, class_index, "--format", "hdf5")
    with h5py.File(tmp_path / "h5" / "features.h5") as store:
        h5_rows = dict(zip(store["key"].asstr()[:], zip(store["predicted_ids"][:], store["predicted_names"].asstr()[:],
                                                         store["predicted_scores"][:])))
    for key in keys:
        ids, names, scores = h5_rows[key]
        assert ids.tolist() == rows[key]["predicted_ids"] and names.tolist() == rows[key]["predicted_names"]
        np.testing.assert_array_equal(scores, np.float32(rows[key]["predicted_scores"]))


def test_predictions_refuse_weights_without_a_classifier(photos, small_weights, class_index, tmp_path):
    with pytest.raises(ConfigError, match="no classifier"):
        featurize(photos, tmp_path / "out", small_weights, class_index)
    assert not (tmp_path / "out").exists()
