"""featurize: batch feature extraction for large image datasets (Apache Beam + Keras).

`run(argv)` runs the `featurize run` command as a function; the composite transforms
`ReadImages` and `ExtractFeatures` build custom Beam graphs (`PendingUnits`,
`ProcessUnits` and `WriteManifest` are the stages `run` wires, see pipeline/job/launch.py);
`FeatureStore` opens a finished output.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["run", "ReadImages", "ExtractFeatures", "KerasBackboneHandler", "ModelSpec", "FeatureStore"]


def __getattr__(name: str):
    # Lazy, so `import pipeline` (and a Beam worker unpickling a DoFn) does not import Beam's IO or Keras early.
    if name == "run":
        from pipeline.job.launch import run
        return run
    if name in ("ReadImages", "ExtractFeatures"):
        from pipeline import transforms
        return getattr(transforms, name)
    if name == "FeatureStore":
        from pipeline.store.feature_store import FeatureStore
        return FeatureStore
    if name in ("KerasBackboneHandler", "ModelSpec"):
        from pipeline.model import handler
        return getattr(handler, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
