"""Reads back the stores .ci/run wrote with a plain install: every sample is one finite row.

Usage: read_back.py DIR N, where DIR holds parquet/ and hdf5/ outputs of the same N images.
"""
import json
import os
import pathlib
import sys

import h5py
import numpy as np
import pyarrow.parquet as pq

root, expected = pathlib.Path(sys.argv[1]), int(sys.argv[2])
table = pq.read_table(root / "parquet" / "features")
parquet = dict(zip(table.column("key").to_pylist(), np.asarray(table.column("embedding").to_pylist())))
with h5py.File(root / "hdf5" / "features.h5") as store:
    keys = [key.decode() for key in store["key"][:]]
    hdf5 = dict(zip(keys, store["embedding"][:]))
for name in ("parquet", "hdf5"):
    counts = json.loads((root / name / "manifest.json").read_text())["counts"]
    assert counts["rows"] == expected and counts["errors"] == 0, (name, counts)
assert sorted(parquet) == sorted(hdf5) and len(parquet) == expected, (len(parquet), len(hdf5))
for key, vector in parquet.items():
    assert np.isfinite(vector).all() and np.allclose(vector, hdf5[key], rtol=1e-5, atol=1e-6), key
print(f"plain install: {expected} rows in Parquet and HDF5, equal vectors")
sys.stdout.flush()
# Done: skip C++ teardown, where Arrow's thread pools can abort a finished process (apache/arrow#34314).
os._exit(0)
