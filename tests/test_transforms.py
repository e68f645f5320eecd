"""The library transforms (pipeline/transforms.py) in a Beam graph of one's own: `ReadImages` then
`ExtractFeatures` give the rows `featurize run` gives, and a failing batch is bisected the same way
(one infer error row for the input that fails alone, vectors for the rest), through the one loaded
model both use (pipeline.model.handler.LoadedModel)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.images import DecodeSpec
from pipeline.job.launch import run
from pipeline.model.handler import KerasBackboneHandler
from pipeline.model.spec import ModelSpec
from tests.helpers.poison import Poisoned, poison_white_images, write_images
from tests.helpers.runs import TEST_MODEL, TEST_SIZE


def graph_rows(source, handler, decode, out):
    """ReadImages -> ExtractFeatures on the in-process runner, written as JSON lines and read back:
    ({key: vector}, [(key, stage, error type)])."""
    import apache_beam as beam

    from pipeline import ExtractFeatures, ReadImages

    with beam.Pipeline(runner="FnApiRunner") as p:
        read = p | ReadImages(str(source))
        features = read["images"] | ExtractFeatures(handler, decode)
        (features["rows"] | "RowJson" >> beam.Map(lambda row: json.dumps([row["key"], row["embedding"].tolist()]))
         | "Rows" >> beam.io.WriteToText(str(out / "rows"), shard_name_template=""))
        (features["errors"] | "ErrorJson" >> beam.Map(lambda e: json.dumps([e.key, e.stage, e.error_type]))
         | "Errors" >> beam.io.WriteToText(str(out / "errors"), shard_name_template=""))
    rows = [json.loads(line) for line in (out / "rows").read_text().splitlines()]
    errors = [tuple(json.loads(line)) for line in (out / "errors").read_text().splitlines()]
    return {key: np.asarray(vector, np.float32) for key, vector in rows}, errors


def test_a_graph_of_ones_own_gives_the_rows_featurize_run_gives(small_weights, tmp_path):
    source = write_images(tmp_path / "in", TEST_SIZE, None)
    handler = KerasBackboneHandler(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights), batch_size=4)
    rows, errors = graph_rows(source, handler, DecodeSpec(TEST_SIZE, TEST_SIZE), tmp_path)
    run(["--input", str(source), "--output", str(tmp_path / "out"), "--model", TEST_MODEL, "--weights", small_weights,
         "--image-size", str(TEST_SIZE), "--batch-size", "4", "--direct_running_mode=in_memory", "--no-progress"])
    stored = {r["key"]: r["embedding"] for r in pq.read_table(tmp_path / "out" / "features").to_pylist()}
    assert errors == [] and sorted(rows) == sorted(stored) and len(rows) == 10
    for key, vector in rows.items():
        np.testing.assert_allclose(vector, stored[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_poison_input_is_one_infer_error_row_and_its_batch_keeps_its_vectors(small_weights, tmp_path, monkeypatch):
    source = write_images(tmp_path / "in", TEST_SIZE, 6)
    handler = KerasBackboneHandler(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights), batch_size=4)
    decode = DecodeSpec(TEST_SIZE, TEST_SIZE)
    (tmp_path / "clean").mkdir()
    clean, _ = graph_rows(source, handler, decode, tmp_path / "clean")
    real_load = KerasBackboneHandler.load_model
    monkeypatch.setattr(KerasBackboneHandler, "load_model", lambda self: poison_white_images(real_load(self)))
    fresh = KerasBackboneHandler(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights), batch_size=4)
    (tmp_path / "poisoned").mkdir()
    rows, errors = graph_rows(source, fresh, decode, tmp_path / "poisoned")
    assert errors == [("img6.png", "infer", "Poisoned")]
    assert sorted(rows) == sorted(set(clean) - {"img6.png"})
    for key, vector in rows.items():
        np.testing.assert_allclose(vector, clean[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_model_that_fails_every_input_fails_the_graph(small_weights, tmp_path, monkeypatch):
    """Not data: a broken model raises (Beam would retry the bundle), never a graph of error rows."""
    source = write_images(tmp_path / "in", TEST_SIZE, None)

    def broken(self):
        model = real_load(self)
        model.infer = lambda pixels: (_ for _ in ()).throw(Poisoned("the model is broken"))
        return model

    real_load = KerasBackboneHandler.load_model
    monkeypatch.setattr(KerasBackboneHandler, "load_model", broken)
    handler = KerasBackboneHandler(ModelSpec(TEST_MODEL, (TEST_SIZE, TEST_SIZE), small_weights), batch_size=4)
    with pytest.raises(Poisoned, match="the model is broken"):  # the in-process runner raises it as it is
        graph_rows(source, handler, DecodeSpec(TEST_SIZE, TEST_SIZE), tmp_path)
