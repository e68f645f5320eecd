"""`Fingerprint`: what decides a store's numbers, as one type.

Built by the launcher (pipeline.job.launch) from a run's configuration, written as JSON into the
manifest, `_featurize/store.json`, the Parquet schema and the HDF5 attributes, and parsed back by
the store (`Fingerprint.from_json`). The conversions to the model and decode specs live here, in one
place: the specs a run computes with and the specs that embed a new image exactly as the store's
rows were embedded are the same (tests/store/test_fingerprint.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # both Beam-free, imported when a spec is made
    from pipeline.images import DecodeSpec
    from pipeline.model.spec import ModelSpec

# What a reader needs; the model fields may be absent from stores of generated vectors (benches, tests).
_REQUIRED = ("outputs", "dtype")


@dataclass(frozen=True)
class Fingerprint:
    """Two stores with equal fingerprints (versions aside) are comparable vector for vector.
    Field order is the JSON's key order; the defaults are what stores written before a field
    existed were made with."""
    backbone: str | None = None
    weights: str | None = None  # "imagenet", "none" or a weights file
    weights_sha256: str | None = None
    weights_ordering: str | None = None
    predictions: int = 0
    input_size: tuple[int, int] | None = None  # (height, width)
    resize: str | None = None
    interpolation: str | None = None
    jpeg_draft: bool | None = None
    exif_transpose: bool | None = None
    resize_in: str = "host"  # where the resize ran: host (Pillow) or model (pipeline.model.resample)
    preprocess: str | None = None
    layers: tuple[str, ...] | None = None
    pooling: tuple[str, ...] | None = None
    gem_p: float | None = None
    l2_normalize: bool | None = None
    outputs: dict[str, int] = field(default_factory=dict, hash=False)
    dtype: str = "float32"
    precision: str = "float32"
    keras_backend: str = "tensorflow"
    family: str | None = None  # a keras-hub model's family (pipeline.model.hub): clip, siglip, dinov2, ...
    versions: dict[str, str | None] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON document stores hold (lists, not tuples; the keys in this class's order)."""
        document = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("input_size", "layers", "pooling"):
            document[name] = list(document[name]) if document[name] else None
        document["outputs"] = dict(self.outputs)
        document["versions"] = dict(self.versions)
        return document

    def __getitem__(self, name: str) -> Any:
        # Read like the JSON document too: `fp["backbone"]` keeps working in callers and scripts.
        return self.to_json()[name]

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "Fingerprint":
        """Parse a stored fingerprint; keys this version does not know are ignored."""
        missing = [name for name in _REQUIRED if name not in document]
        if missing:
            raise ValueError(f"fingerprint lacks {', '.join(missing)}; it was not written by featurize")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        for name in ("input_size", "layers", "pooling"):
            values[name] = tuple(values[name]) if values.get(name) else None
        return cls(**values)

    def model_spec(self, root: str | None = None) -> "ModelSpec":
        """The `ModelSpec` that computes this store's vectors (weights_sha256 makes the staging verify
        that a weights file is the one the store was made with). A keras-hub model's weights are its
        preset's copy inside the store: `root` is the store's folder."""
        from pipeline.model.spec import ModelSpec, weights_argument

        self._require_model()
        weights = weights_argument(self.weights)
        if self.family is not None:
            if root is None:
                raise ValueError(f"{self.backbone}'s weights are a preset copy inside its store; pass the store's root")
            from pipeline import files

            weights = files.join(root, self.weights)
        return ModelSpec(self.backbone, self.input_size, weights,
                         self.layers, self.pooling, self.gem_p or 3.0, self.l2_normalize,
                         weights_sha256=self.weights_sha256, precision=self.precision,
                         weights_ordering=self.weights_ordering or "auto", predictions=self.predictions,
                         resample=self.interpolation if self.resize_in == "model" else None)

    def decode_spec(self, max_pixels: int | None) -> "DecodeSpec":
        """The `DecodeSpec` that turned the store's images into pixels (max_pixels is the run's
        configuration, not part of the fingerprint)."""
        from pipeline.images import DecodeSpec

        self._require_model()
        height, width = self.input_size
        return DecodeSpec(height, width, self.resize, self.interpolation, max_pixels, self.jpeg_draft,
                          self.exif_transpose, self.resize_in)

    def _require_model(self) -> None:
        if self.backbone is None or self.input_size is None:
            raise ValueError("this store's fingerprint names no backbone (its vectors were not made by "
                             "featurize run), so new images cannot be embedded like its rows")
