"""The names inside an output folder, which the writers and the readers share.

    features/        feature shards (Parquet, or HDF5 with features.h5 over them)
    errors/          error rows (Parquet)
    manifest.json    written last: the store is finished
    index/OUTPUT/    `featurize index` (pipeline.store.index)
    _featurize/      run state: store.json, one journal entry per unit, temporaries
"""
FEATURES_DIR = "features"
ERRORS_DIR = "errors"
MANIFEST = "manifest.json"
INDEX_DIR = "index"
VIRTUAL_STORE = "features.h5"
STATE_DIR = "_featurize"
STORE_STATE = f"{STATE_DIR}/store.json"
UNITS_DIR = f"{STATE_DIR}/units"
TMP_DIR = f"{STATE_DIR}/tmp"
FINGERPRINT_KEY = b"featurize.fingerprint"  # Parquet schema metadata
FINGERPRINT_ATTR = "featurize.fingerprint"  # HDF5 file attribute
