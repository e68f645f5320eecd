"""Writing a unit: its rows and errors committed whole (UnitWriter); the schemas it writes."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.elements import ErrorRecord
from pipeline.job import journal
from pipeline.job.entries import UnitEntry
from pipeline.job.writer import UnitWriter
from pipeline.store.schema import ERROR_SCHEMA, FINGERPRINT_KEY, feature_schema
from tests.helpers.units import FINGERPRINT, row, write_unit


def test_feature_schema_types_and_fingerprint():
    schema = feature_schema({"embedding": 8}, "float16", {"backbone": "X"})
    assert schema.field("embedding").type == pa.list_(pa.float16(), 8)
    assert schema.field("width").type == pa.int32()
    assert json.loads(schema.metadata[FINGERPRINT_KEY]) == {"backbone": "X"}


def test_a_unit_is_committed_with_its_rows_errors_and_journal_entry(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.job.writer.ROW_GROUP_BYTES", 100)  # several row groups in one unit file
    entry = write_unit(tmp_path, "files-a", range(70), ["bad1", "bad2"])
    attempt = entry.files["features"].split(".")[1]  # final names are per attempt (pipeline.job.journal)
    assert entry.files == {"features": f"features/files-a.{attempt}.parquet",
                              "errors": f"errors/files-a.{attempt}.parquet"}
    assert (entry.inputs, entry.rows, entry.errors.total) == (72, 70, 2)
    assert entry.errors.by_stage["decode"] == 2
    table = pq.read_table(tmp_path / entry.files["features"])
    assert pq.ParquetFile(tmp_path / entry.files["features"]).num_row_groups > 1
    assert table.column("key").to_pylist() == [f"k{i}" for i in range(70)]
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)),
                          np.stack([row(i)["embedding"] for i in range(70)]))
    assert pq.read_table(tmp_path / entry.files["errors"]).column("key").to_pylist() == ["bad1", "bad2"]
    assert journal.read_journal(str(tmp_path), "files-a") == entry
    assert not list((tmp_path / "_featurize" / "tmp").iterdir())


def test_abort_leaves_nothing_and_a_second_attempt_withdraws_rather_than_duplicates(tmp_path):
    import os

    writer = UnitWriter(str(tmp_path), "files-b", "hdf5", FINGERPRINT)
    writer.add_row(row(1))
    local_shard = writer._rows.local_path  # HDF5 is written locally first (it seeks), copied on commit
    assert os.path.exists(local_shard)
    writer.abort()
    assert not os.path.exists(local_shard)
    assert not (tmp_path / "_featurize" / "tmp").exists()
    assert journal.read_journal(str(tmp_path), "files-b") is None
    first = write_unit(tmp_path, "files-b", [1, 2], [])
    second = write_unit(tmp_path, "files-b", [1, 2], [])  # a second attempt (a retry, a speculative copy)
    assert second == first  # the committed attempt wins; the other withdrew its files
    assert [f"features/{p.name}" for p in (tmp_path / "features").iterdir()] == [first.files["features"]]
    assert pq.read_table(tmp_path / "features").num_rows == 2


def test_a_unit_marked_retry_is_replaced_by_its_redo(tmp_path):
    writer = UnitWriter(str(tmp_path), "tar-s", "parquet", FINGERPRINT)
    writer.add_error(ErrorRecord("s.tar", "s.tar", "read", "FileNotFoundError", "missing"))
    first = writer.commit(UnitEntry("tar-s", "tar", "s.tar", 1, retry=True))
    redo = UnitWriter(str(tmp_path), "tar-s", "parquet", FINGERPRINT)
    redo.add_row(row(1))
    second = redo.commit(UnitEntry("tar-s", "tar", "s.tar", 1))
    assert journal.read_journal(str(tmp_path), "tar-s") == second and second.is_final
    assert "retry" not in json.loads((tmp_path / "_featurize" / "units" / "tar-s.json").read_text())
    assert not (tmp_path / first.files["errors"]).exists()  # the replaced entry's files are gone
    assert pq.read_table(tmp_path / "features").num_rows == 1


def test_a_unit_whose_counts_do_not_add_up_is_never_committed(tmp_path):
    writer = UnitWriter(str(tmp_path), "files-c", "parquet", FINGERPRINT)
    writer.add_row(row(1))
    with pytest.raises(RuntimeError, match="lost track"):
        writer.commit(UnitEntry("files-c", "files", "", 3))
    assert journal.read_journal(str(tmp_path), "files-c") is None


def test_error_schema_reads_back_with_pandas(tmp_path):
    import pandas as pd

    write_unit(tmp_path, "files-1", [], ["a", "b"])
    errors = pd.read_parquet(tmp_path / "errors")
    assert list(errors.columns) == ERROR_SCHEMA.names and errors["key"].tolist() == ["a", "b"]
    assert list(journal.read_journal(str(tmp_path), "files-1").files) == ["errors"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rows_to_table_without_pandas(dtype):
    # A plain `pip install .` has no pandas: building a unit's table must not import it.
    import subprocess
    import sys

    script = f"""
import sys

class NoPandas:  # as if pandas were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")

sys.meta_path.insert(0, NoPandas())
import numpy as np
from pipeline.job.writer import rows_to_table
from pipeline.store.schema import feature_schema
schema = feature_schema({{"embedding": 3}}, "{dtype}", {{}})
rows = [{{"key": "a", "uri": "u", "width": 1, "height": 2, "embedding": np.array([1, 2, 3], np.float32)}}]
table = rows_to_table(rows, schema)
print(table.column("embedding").type, table.column("embedding").to_pylist())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["fixed_size_list<item:", f"{'halffloat' if dtype == 'float16' else 'float'}>[3]",
                                  "[[1.0,", "2.0,", "3.0]]"]
