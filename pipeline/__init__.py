"""featurize: batch feature extraction for large image datasets (Apache Beam + Keras).

`run(argv)` runs the `featurize run` command as a function; the composite transforms
`ReadImages` and `ExtractFeatures` build custom Beam graphs (`PlannedUnits`,
`ProcessUnits` and `WriteManifest` are the stages `run` wires, see pipeline/job/launch.py);
`FeatureStore` opens a finished output.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["run", "ReadImages", "ExtractFeatures", "KerasBackboneHandler", "ModelSpec", "DecodeSpec", "FeatureStore",
           "Fingerprint", "ConfigError", "RunFailed"]

# name -> (module, attribute): imported on first use.
_LAZY = {
    "run": ("pipeline.job.launch", "run"),
    "ReadImages": ("pipeline.transforms", "ReadImages"),
    "ExtractFeatures": ("pipeline.transforms", "ExtractFeatures"),
    "KerasBackboneHandler": ("pipeline.model.handler", "KerasBackboneHandler"),
    "ModelSpec": ("pipeline.model.spec", "ModelSpec"),
    "DecodeSpec": ("pipeline.images", "DecodeSpec"),
    "FeatureStore": ("pipeline.store.feature_store", "FeatureStore"),
    "Fingerprint": ("pipeline.store.fingerprint", "Fingerprint"),
    "ConfigError": ("pipeline.errors", "ConfigError"),
    "RunFailed": ("pipeline.logs", "RunFailed"),
}


def __getattr__(name: str):
    # Lazy, so `import pipeline` (and a Beam worker unpickling a DoFn) does not import Beam's IO or Keras early.
    if name not in _LAZY:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
