"""featurize: batch feature extraction for large image datasets (Apache Beam + Keras).

`run(argv)` runs the `featurize run` command as a function; the composite transforms
`ReadImages`, `ExtractFeatures` and `WriteFeatures` build custom Beam graphs;
`FeatureStore` opens a finished output.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["run", "ReadImages", "ExtractFeatures", "WriteFeatures", "KerasBackboneHandler", "ModelSpec",
           "FeatureStore"]


def __getattr__(name: str):
    # Lazy, so `import pipeline` (and a Beam worker unpickling a DoFn) does not import Beam's IO or Keras early.
    if name == "run":
        from pipeline.job import run
        return run
    if name == "ReadImages":
        from pipeline.sources import ReadImages
        return ReadImages
    if name == "ExtractFeatures":
        from pipeline.transforms import ExtractFeatures
        return ExtractFeatures
    if name == "WriteFeatures":
        from pipeline.sinks import WriteFeatures
        return WriteFeatures
    if name == "FeatureStore":
        from pipeline.store import FeatureStore
        return FeatureStore
    if name in ("KerasBackboneHandler", "ModelSpec"):
        from pipeline import handler
        return getattr(handler, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
