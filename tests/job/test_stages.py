"""The run's stages, without a pipeline: a store row, the stage counters, decoding one record."""
import numpy as np

from pipeline.elements import ErrorRecord, ImageMeta, ImageRecord
from pipeline.images import DecodeSpec
from pipeline.job.stages import RunCounters, TopClasses, decode_record, feature_row
from pipeline.model.predictions import CLASSIFIER_OUTPUT, IDS, NAMES, SCORES


def test_a_row_holds_vectors_in_the_stores_dtype_and_the_top_classes():
    meta = ImageMeta("k", "u", 3, 4)
    row = feature_row(meta, {"embedding": np.arange(3, dtype=np.float64),
                             CLASSIFIER_OUTPUT: np.array([0.1, 0.6, 0.3])}, np.dtype("float16"),
                      TopClasses(2, ["a", "b", "c"]))
    assert (row["key"], row["uri"], row["width"], row["height"]) == ("k", "u", 3, 4)
    assert row["embedding"].dtype == np.float16 and CLASSIFIER_OUTPUT not in row
    assert row[IDS].tolist() == [1, 2] and row[NAMES] == ["b", "c"] and row[SCORES].dtype == np.float32


def test_an_undecodable_record_is_a_decode_error_row_and_is_counted():
    metrics = RunCounters()
    record = ImageRecord("bad.jpg", "/in/bad.jpg", b"not an image")
    metrics.read(record)
    decoded = decode_record(record, DecodeSpec(8, 8))
    metrics.decoded(decoded)
    assert isinstance(decoded, ErrorRecord) and decoded.stage == "decode" and decoded.key == "bad.jpg"
    assert metrics.pending["inputs"] == 1 and metrics.pending["bytes_read"] == len(b"not an image")
    assert metrics.pending["decode_errors"] == 1 and metrics.pending[f"decode_errors_{decoded.error_type}"] == 1


# --- a unit through _ProcessUnit, with a fake model: decoding beside the model ---

import glob  # noqa: E402
import io  # noqa: E402
import threading  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.elements import WorkUnit  # noqa: E402
from pipeline.images import decode_image  # noqa: E402
from pipeline.job import journal, stages  # noqa: E402
from pipeline.job.stages import UnitSettings, _ProcessUnit  # noqa: E402
from pipeline.model.handler import KerasBackboneHandler  # noqa: E402
from pipeline.model.runtime import FeatureModel  # noqa: E402
from pipeline.model.spec import ModelSpec  # noqa: E402

POISON = 200  # an image whose red channel is this fails the fake model alone (an infer error row)
SPEC8 = DecodeSpec(8, 8)


class FakeHandler(KerasBackboneHandler):
    """The handler with a model that costs nothing: an image's vector is its top-left pixel."""

    def __init__(self, predict_hook=None):
        super().__init__(ModelSpec("MobileNetV3Small", (8, 8), None), batch_size=2)
        self._hook = predict_hook

    def load_model(self):
        def predict(pixels):
            if self._hook:
                self._hook()
            if (pixels[:, 0, 0, 0] == POISON).any():
                raise ValueError("poisoned image")
            return {"embedding": pixels[:, 0, 0, :].astype(np.float32)}
        return FeatureModel(2, predict)


def jpeg(red):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (red, 10, 20)).save(buffer, "JPEG", quality=100)
    return buffer.getvalue()


def files_unit(tmp_path, contents):
    """A files unit of `name -> bytes` in key order."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return WorkUnit("files-test", "files", str(folder),
                    members=tuple((name, str(folder / name)) for name in contents))


def unit_dofn(tmp_path, handler):
    settings = UnitSettings(str(tmp_path / "out"), SPEC8, "parquet",
                            {"outputs": {"embedding": 3}, "dtype": "float32"}, batch_size=2)
    dofn = _ProcessUnit(handler, settings)
    dofn.setup()
    return dofn


# a ok, b undecodable, c fails the model alone, d ok, e undecodable, f ok; batches of 2 decoded images
CONTENTS = {"a.jpg": jpeg(50), "b.jpg": b"not a jpeg", "c.jpg": jpeg(POISON), "d.jpg": jpeg(90),
            "e.jpg": b"", "f.jpg": jpeg(130)}


def test_a_unit_decoded_beside_the_model_has_the_rows_and_error_rows_of_reading_in_turn(tmp_path):
    dofn = unit_dofn(tmp_path, FakeHandler())
    entry = dofn._attempt(files_unit(tmp_path, CONTENTS), {}, None)
    assert (entry.inputs, entry.rows) == (6, 3)
    features = pq.read_table(glob.glob(str(tmp_path / "out/features/*.parquet"))[0]).to_pylist()
    assert [row["key"] for row in features] == ["a.jpg", "d.jpg", "f.jpg"]
    for row in features:
        pixels, _ = decode_image(CONTENTS[row["key"]], SPEC8)
        assert row["embedding"] == pixels[0, 0].astype(np.float32).tolist()
    # The order of reading in turn: batch 1's decode error, batch 1's infer error, then batch 2's decode error.
    errors = pq.read_table(glob.glob(str(tmp_path / "out/errors/*.parquet"))[0]).to_pylist()
    assert [(e["key"], e["stage"]) for e in errors] == [("b.jpg", "decode"), ("c.jpg", "infer"), ("e.jpg", "decode")]
    pending = dofn._metrics.pending
    assert (pending["inputs"], pending["decoded"], pending["decode_errors"], pending["infer_errors"],
            pending["rows"], pending["units"]) == (6, 4, 2, 1, 3, 1)


def test_an_unexpected_exception_while_decoding_fails_the_unit_and_commits_nothing(tmp_path, monkeypatch):
    real = stages.decode_record

    def decode(record, spec):
        if record.key == "d.jpg":  # a bug, not a bad image: no error row may hide it
            raise RuntimeError("a bug in decoding")
        return real(record, spec)

    monkeypatch.setattr(stages, "decode_record", decode)
    dofn = unit_dofn(tmp_path, FakeHandler())
    with pytest.raises(RuntimeError, match="a bug in decoding"):
        dofn._attempt(files_unit(tmp_path, CONTENTS), {}, None)
    assert journal.read_journal(str(tmp_path / "out"), "files-test") is None
    assert not glob.glob(str(tmp_path / "out/features/*")) and not glob.glob(str(tmp_path / "out/errors/*"))
    assert not dofn._metrics.pending  # nothing of the failed attempt is counted


def test_the_next_batch_is_decoded_while_the_model_runs(tmp_path, monkeypatch):
    """The model's first call and the decode of the second batch wait for each other to have started: read
    and decoded in turn (or the next batch read before the model runs), one of them waits in vain (the
    timeouts only bound that failing case)."""
    model_running, next_batch_decoding = threading.Event(), threading.Event()
    real = stages.decode_record
    seen = {}

    def decode(record, spec):
        if record.key == "d.jpg":  # the first image of the second batch
            seen["decode saw the model running"] = model_running.wait(timeout=60)
            next_batch_decoding.set()
        return real(record, spec)

    def first_call_waits():
        if not model_running.is_set():
            model_running.set()
            seen["model saw the next batch decoding"] = next_batch_decoding.wait(timeout=60)

    monkeypatch.setattr(stages, "decode_record", decode)
    dofn = unit_dofn(tmp_path, FakeHandler(first_call_waits))
    entry = dofn._attempt(files_unit(tmp_path, {"a.jpg": jpeg(1), "c.jpg": jpeg(2), "d.jpg": jpeg(3)}), {}, None)
    assert seen == {"decode saw the model running": True, "model saw the next batch decoding": True}
    assert entry.rows == 3
