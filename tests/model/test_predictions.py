"""--predictions K: the top-K classes ordered as Keras's decode_predictions, the class index read or asked for
(whole runs: tests/scenarios/test_predictions.py)."""
import json

import numpy as np
import pytest

from pipeline.model import predictions
from pipeline.model.predictions import ClassIndexError, load_class_names, top_classes



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
