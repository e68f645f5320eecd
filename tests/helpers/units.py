"""Work units written with featurize's own UnitWriter and no model: a fingerprint, rows, `write_unit`.
Not a test module (tests/job/test_writer.py, test_manifest.py and the store's tests share it)."""
from __future__ import annotations

import numpy as np

from pipeline.elements import ErrorRecord
from pipeline.external_sort import CHUNK
from pipeline.inputs.listing import Listing
from pipeline.job.entries import UnitEntry
from pipeline.job.writer import UnitWriter

FINGERPRINT = {"backbone": "X", "outputs": {"embedding": 4}, "dtype": "float32"}


def row(i):
    return {"key": f"k{i}", "uri": f"u{i}", "width": i, "height": 2 * i,
            "embedding": np.arange(4, dtype=np.float32) + i}


def write_unit(out, unit_id, rows, errors, fmt="parquet"):
    writer = UnitWriter(str(out), unit_id, fmt, FINGERPRINT)
    for i in rows:
        writer.add_row(row(i))
    for key in errors:
        writer.add_error(ErrorRecord(key, key, "decode", "E", "m"))
    return writer.commit(UnitEntry(unit_id, "files", "", len(rows) + len(errors),
                                   keys=tuple([f"k{i}" for i in rows] + list(errors))))


def files_listing(keys, root="photos", elsewhere=(), chunk=CHUNK):
    """A listing of `root/KEY` files (in the order given), plus `elsewhere` paths whose key one of them has."""
    listing = Listing("files", root, chunk=chunk)
    for key in keys:
        listing.add(key, f"{root}/{key}", 10)
    for key, path in elsewhere:
        listing.add(key, path, 10)
    return listing.finish()
