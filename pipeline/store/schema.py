"""What a finished store is made of, shared by the writers (pipeline.job) and the readers (pipeline.store).

    features/        feature shards (Parquet, or HDF5 with features.h5 over them)
    errors/          error rows (Parquet, ERROR_SCHEMA)
    manifest.json    written last: the store is finished
    index/OUTPUT/    `featurize index` (pipeline.store.indexing, read by pipeline.store.index)
    _featurize/      run state: store.json, one journal entry per unit, the run's plan, temporaries

Also the Parquet schemas of feature and error rows, and what featurize may delete in an output
folder (`UNIT_PREFIXES`, `OWNED_PATTERNS`): only its own files. Imports pyarrow, nothing heavier.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipeline.inputs.layouts import UNIT_LAYOUTS
from pipeline.model import predictions

FEATURES_DIR = "features"
ERRORS_DIR = "errors"
MANIFEST = "manifest.json"
INDEX_DIR = "index"
VIRTUAL_STORE = "features.h5"
STATE_DIR = "_featurize"
STORE_STATE = f"{STATE_DIR}/store.json"
UNITS_DIR = f"{STATE_DIR}/units"
TMP_DIR = f"{STATE_DIR}/tmp"
PLAN_DIR = f"{STATE_DIR}/plan"
PRESETS_DIR = f"{STATE_DIR}/presets"  # a hub model's preset files, copied by the launcher, read by every worker
FINGERPRINT_KEY = b"featurize.fingerprint"  # Parquet schema metadata
FINGERPRINT_ATTR = "featurize.fingerprint"  # HDF5 file attribute

# Unit ids start so; a unit's files are named after it (features/UNIT.ATTEMPT.*): what featurize may delete.
UNIT_PREFIXES = tuple(f"{layout}-" for layout in UNIT_LAYOUTS)
# Everything this tool writes into an output directory (for --overwrite): only its own files.
OWNED_PATTERNS = (*(f"{folder}/{prefix}*" for folder in (FEATURES_DIR, ERRORS_DIR) for prefix in UNIT_PREFIXES),
                  f"{STATE_DIR}/**", VIRTUAL_STORE, f"{VIRTUAL_STORE}.tmp", MANIFEST, f"{INDEX_DIR}/**")

ERROR_SCHEMA = pa.schema([
    ("key", pa.string()), ("uri", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])


def feature_schema(outputs: dict[str, int], dtype: str, fingerprint: dict[str, Any]) -> pa.Schema:
    """key, uri, width, height, then one fixed_size_list<dtype>[D] column per model output, then
    with --predictions K: predicted_ids list<int32>[K], predicted_names list<string>[K],
    predicted_scores list<float32>[K]."""
    value_type = pa.float16() if dtype == "float16" else pa.float32()
    fields = [("key", pa.string()), ("uri", pa.string()), ("width", pa.int32()), ("height", pa.int32())]
    fields += [(name, pa.list_(value_type, dim)) for name, dim in outputs.items()]
    top = fingerprint.get("predictions") or 0
    if top:
        fields += [(predictions.IDS, pa.list_(pa.int32(), top)), (predictions.NAMES, pa.list_(pa.string(), top)),
                   (predictions.SCORES, pa.list_(pa.float32(), top))]
    return pa.schema(fields, metadata={FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)})


def skipped_extensions(skipped: dict) -> str:
    """`.txt 1001, .mov 1`: a manifest's skipped files by extension (the run's summary, its dry run, inspect)."""
    return ", ".join(f"{extension} {count}" for extension, count in skipped["by_extension"].items())
