"""--predictions K: top-K columns equal to Keras's model.predict + decode_predictions(top=K)."""
import glob
import json
import re
from collections import Counter

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.model import predictions
from pipeline.cli import main
from pipeline.job.config import ConfigError
from pipeline.job.launch import run
from pipeline.model.predictions import ClassIndexError, load_class_names, top_classes

SIZE = 48
MODEL = "MobileNetV3Small"


@pytest.fixture(scope="module")
def class_index(tmp_path_factory):
    """A class index in Keras's format (Keras's own cannot be downloaded here): 1000 distinct names."""
    path = tmp_path_factory.mktemp("index") / "classes.json"
    path.write_text(json.dumps({str(i): [f"n{i:08d}", f"class_{i}_{'ab'[i % 2]}"] for i in range(1000)}))
    return str(path)


@pytest.fixture
def keras_class_index(class_index, monkeypatch):
    """Keras's decode_predictions reading the same index (its module global, as after its own load)."""
    from keras.src.applications import imagenet_utils

    with open(class_index) as handle:
        monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", json.load(handle))
    return imagenet_utils.decode_predictions


def test_top_classes_order_equals_decode_predictions_including_ties(class_index, keras_class_index):
    rng = np.random.default_rng(0)
    probabilities = rng.random((20, 1000)).astype(np.float32)
    probabilities[3, [5, 17, 900, 2]] = 2.0  # a four-way tie at the top
    probabilities[4, :] = 0.5  # every class tied
    names = load_class_names(class_index, 1000)
    for row, expected in zip(probabilities, keras_class_index(probabilities, top=5)):
        got = top_classes(row, 5, names)
        assert got[predictions.NAMES] == [name for _, name, _ in expected]
        assert [names[i] for i in got[predictions.IDS]] == got[predictions.NAMES]
        assert got[predictions.SCORES].tolist() == [score for _, _, score in expected]


@pytest.mark.parametrize("content, message", [
    ("{", "cannot be read as JSON"),
    (json.dumps({str(i): ["n", f"c{i}"] for i in range(999)}), 'must map every class "0" .. "999"'),
    (json.dumps({str(i): ["n", f"c{i}"] for i in range(1001)}), "has 1001 classes but the model has 1000"),
])
def test_a_bad_class_index_is_one_sentence(content, message, tmp_path):
    (tmp_path / "index.json").write_text(content)
    with pytest.raises(ClassIndexError, match=message):
        load_class_names(str(tmp_path / "index.json"), 1000)


def test_without_the_keras_cache_and_network_the_class_index_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(predictions, "CLASS_INDEX_URL", "http://127.0.0.1:9/imagenet_class_index.json")
    with pytest.raises(ClassIndexError, match="not in Keras's cache and could not be downloaded from "
                                              "http://127.0.0.1:9/.*pass --class-index FILE"):
        load_class_names(None, 1000)


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
