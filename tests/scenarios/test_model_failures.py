"""Whole runs with a real model that fails: a poison image is one infer error row (its batch bisected), and
running out of memory halves the batch, which the manifest reports."""
from tests.helpers.poison import poison_white_images, write_images


def clean_and_wrapped_runs(tmp_path, small_weights, monkeypatch, batch_size, wrap, white=None):
    """Nine or ten small PNGs (`white`: the position of an all-white one) featurized twice in
    this process: with the real model, then with the model `wrap` returns for it. Returns both
    manifests and {key: vector} of each store."""
    import pyarrow.parquet as pq

    from pipeline.model.handler import KerasBackboneHandler
    from pipeline.job.launch import run
    from tests.helpers.runs import TEST_MODEL, TEST_SIZE

    write_images(tmp_path / "in", TEST_SIZE, white)
    args = ["--input", str(tmp_path / "in"), "--model", TEST_MODEL, "--weights", small_weights, "--image-size",
            str(TEST_SIZE), "--batch-size", str(batch_size), "--direct_running_mode=in_memory", "--no-progress"]
    clean = run([*args, "--output", str(tmp_path / "clean")])
    real_load = KerasBackboneHandler.load_model
    monkeypatch.setattr(KerasBackboneHandler, "load_model", lambda self: wrap(real_load(self)))
    wrapped = run([*args, "--output", str(tmp_path / "wrapped")])
    vectors = [{r["key"]: r["embedding"] for r in pq.read_table(tmp_path / out / "features").to_pylist()}
               for out in ("clean", "wrapped")]
    return clean, wrapped, *vectors


def test_a_poison_image_is_one_infer_error_row_and_its_batch_keeps_its_vectors(small_weights, tmp_path, monkeypatch):
    """A real model wrapped to fail on batches holding one marked (all-white) image."""
    import numpy as np
    import pyarrow.parquet as pq

    clean, poisoned, want, rows = clean_and_wrapped_runs(tmp_path, small_weights, monkeypatch, 4, poison_white_images, white=6)
    errors = pq.read_table(tmp_path / "wrapped" / "errors").to_pylist()
    assert [(e["key"], e["stage"], e["error_type"]) for e in errors] == [("img6.png", "infer", "Poisoned")]
    assert sorted(rows) == sorted(set(want) - {"img6.png"})
    for key, vector in rows.items():
        np.testing.assert_array_equal(vector, want[key], err_msg=key)
    assert poisoned["counts"]["errors_by_stage"]["infer"] == poisoned["counts"]["errors"] == 1
    assert clean["counts"]["errors"] == 0


def test_running_out_of_memory_halves_the_batch_and_the_manifest_says_so(small_weights, tmp_path, monkeypatch):
    """A real model wrapped to run out of memory above 2 images a call, as a small GPU would."""
    import numpy as np
    import tensorflow as tf

    def little_memory(model):
        real_for = model.predict_for

        def predict_for(size):
            inner = real_for(size)

            def predict(pixels):
                if len(pixels) > 2:
                    raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating {len(pixels)} images")
                return inner(pixels)
            return predict
        model.predict_for, model.predict = predict_for, predict_for(model.batch_size)
        return model

    clean, small, want, got = clean_and_wrapped_runs(tmp_path, small_weights, monkeypatch, 8, little_memory)
    assert small["out_of_memory"]["smallest_batch_size"] == 2 and "out_of_memory" not in clean
    assert small["metrics"]["counters"]["oom_backoffs"] == 2  # 8 -> 4 -> 2, once for the worker
    assert small["counts"]["rows"] == clean["counts"]["rows"] == 10 and small["counts"]["errors"] == 0
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
