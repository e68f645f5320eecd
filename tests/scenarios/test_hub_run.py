"""`featurize run --model hub:PRESET` end to end on Beam's local runner, and `featurize search --text`:
rows equal keras-hub's own pipeline image by image, the preset's bytes travel through the store (the
workers stage them from there, never from the hub), a resume with another preset and the settings a
preset decides are refused in one sentence, and a text query ranks like the store's text tower says."""
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.job.launch import run
from pipeline.store.feature_store import FeatureStore, NoTextTower
from tests.helpers.hub_presets import hub_run, write_photos
from tests.helpers.runs import MODES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def vectors_by_key(out, column="embedding"):
    table = pq.read_table(os.path.join(out, "features"))
    return {key: np.asarray(vector, np.float32) for key, vector in zip(table["key"].to_pylist(),
                                                                      table[column].to_pylist())}


def test_rows_equal_keras_hubs_pipeline_image_by_image(clip_store, hub_presets):
    import keras_hub

    folder = hub_presets["clip"]
    converter = keras_hub.layers.ImageConverter.from_preset(folder)
    backbone = keras_hub.models.Backbone.from_preset(folder)
    rows = vectors_by_key(clip_store["out"])
    assert clip_store["manifest"]["counts"]["rows"] == len(rows) == 10
    keys = sorted(rows)
    pixels = np.stack([np.asarray(Image.open(os.path.join(clip_store["source"], key)).convert("RGB")) for key in keys])
    reference = np.asarray(backbone.get_vision_embeddings(converter(pixels)))
    for key, expected in zip(keys, reference):
        assert np.linalg.norm(rows[key] - expected) / np.linalg.norm(expected) < 1e-5, key


def test_inspect_names_the_family_and_whether_text_search_works(clip_store, capsys):
    from pipeline.cli import main

    assert main(["inspect", clip_store["out"]]) == 0
    model_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("model "))
    assert "family=clip (text search: yes)" in model_line and "weights=_featurize/presets/" in model_line


def test_the_preset_travels_through_the_store_not_the_hub(clip_store, hub_presets):
    from pipeline.model.hub import PRESET_FILES, PresetFiles

    fingerprint = FeatureStore.open(clip_store["out"]).fingerprint
    assert fingerprint.family == "clip" and fingerprint.backbone == f"hub:{hub_presets['clip']}"
    assert fingerprint.input_size == (64, 64) and fingerprint.pooling == ("model",)
    assert (fingerprint.resize, fingerprint.interpolation) == ("center-crop", "bicubic")  # the converter's policy
    digest = PresetFiles.of_folder(hub_presets["clip"]).digest
    assert fingerprint.weights_sha256 == digest
    copy = PresetFiles.of_folder(os.path.join(clip_store["out"], fingerprint.weights)).sha256
    assert copy.pop(PRESET_FILES) and copy == PresetFiles.of_folder(hub_presets["clip"]).sha256
    # The workers staged the store's copy into their machine's cache, under the digest.
    assert os.path.isfile(os.path.join(clip_store["cache"], "presets", digest, "model.weights.h5"))


def test_text_search_ranks_by_the_stores_text_tower(clip_store):
    store = FeatureStore.open(clip_store["out"])
    query = store.embed_text(["a red bicycle"])[0]
    matrix = store.embeddings()
    cosine = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    result = store.search(text="a red bicycle", k=4)
    assert [store.keys[i] for i in np.argsort(-cosine)[:4]] == result.keys[0]
    np.testing.assert_allclose(result.scores[0], np.sort(cosine)[::-1][:4], rtol=1e-5)
    # The CLI prints the same table as an image query: rank, score, key, uri.
    done = subprocess.run([sys.executable, "-m", "pipeline", "search", clip_store["out"], "--text", "a red bicycle",
                           "--k", "4"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "key", "uri"]
    assert [line.split()[2] for line in lines[2:]] == result.keys[0]
    assert [float(line.split()[1]) for line in lines[2:]] == pytest.approx(list(result.scores[0]), abs=1e-5)


def test_resume_with_another_preset_is_refused_naming_both(clip_store, hub_presets):
    with pytest.raises(ConfigError) as refused:
        hub_run(clip_store["source"], clip_store["out"], hub_presets["siglip"], "--resume", "--dry-run")
    assert f"hub:{hub_presets['clip']}" in str(refused.value) and f"hub:{hub_presets['siglip']}" in str(refused.value)


def test_resume_with_the_same_preset_reuses_every_unit(clip_store, hub_presets):
    manifest = hub_run(clip_store["source"], clip_store["out"], hub_presets["clip"], "--resume", *MODES["in_process"])
    assert manifest["counts"]["reused"] == 10 and manifest["counts"]["rows"] == 10


def test_an_image_only_store_refuses_text_in_one_sentence_before_any_model(hub_presets, tmp_path):
    source = write_photos(str(tmp_path / "photos"), (56, 56), count=4)
    out = tmp_path / "dino"
    hub_run(source, out, hub_presets["dinov2"], "--pooling", "avg,model", *MODES["in_process"])
    store = FeatureStore.open(str(out))
    assert set(store.outputs) == {"final/avg", "final/model"}
    with pytest.raises(NoTextTower, match=r"sees images only\), so it has no text tower"):
        store.search(text="a dog", k=2, output="final/model")
    done = subprocess.run([sys.executable, "-m", "pipeline", "search", str(out), "--text", "a dog",
                           "--output", "final/avg"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "featurize: error: store" in done.stderr and "has no text tower" in done.stderr
    assert "tensorflow" not in done.stderr.lower()


def test_a_store_of_several_outputs_searches_text_against_the_models_own_embedding(hub_presets, tmp_path):
    source = write_photos(str(tmp_path / "photos"), (64, 64), count=4)
    out = tmp_path / "two"
    hub_run(source, out, hub_presets["clip"], "--pooling", "model,avg", *MODES["in_process"])
    store = FeatureStore.open(str(out))
    assert store.text_output() == "final/model" and store.outputs == {"final/model": 24, "final/avg": 32}
    query = store.embed_text(["a blue car"])[0]
    assert store.search(text="a blue car", k=4).keys == store.search(query, k=4, output="final/model").keys
    with pytest.raises(NoTextTower, match="output 'final/avg' .* is not in .* joint image-text space"):
        store.search(text="a blue car", k=2, output="final/avg")


@pytest.mark.parametrize("flags, sentence", [
    (["--weights", "none"], "carries its own weights, so drop --weights"),
    (["--layers", "block9"], "is not a block of"),
    (["--image-size", "96"], "does not fit"),
    (["--predictions", "5"], "applies to keras.applications models"),
])
def test_what_a_preset_decides_is_refused_in_one_sentence(flags, sentence, hub_presets, tmp_path):
    source = write_photos(str(tmp_path / "photos"), (64, 64), count=2)
    with pytest.raises(ConfigError, match=sentence):
        hub_run(source, tmp_path / "out", hub_presets["clip"], "--dry-run", *flags)


def test_a_model_pooling_for_a_cnn_and_a_missing_preset_are_refused(tmp_path):
    source = write_photos(str(tmp_path / "photos"), (64, 64), count=2)
    with pytest.raises(ConfigError, match="pooling 'model' is a hub model's own embedding"):
        run(["--input", source, "--output", str(tmp_path / "a"), "--model", "MobileNetV3Small", "--weights", "none",
             "--pooling", "model", "--dry-run"])
    with pytest.raises(ConfigError, match="is neither a keras-hub preset name"):
        hub_run(source, tmp_path / "b", str(tmp_path / "nowhere"), "--dry-run")
