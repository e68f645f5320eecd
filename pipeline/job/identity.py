"""What a store is: the run's fingerprint (what decides its numbers, built once from the configuration),
the identity written before the first unit, and the comparison every --resume makes with it.

`run_fingerprint` gives the store's JSON and the model and decode specs the workers compute with
(pipeline.store.fingerprint), so both are what the store records; `store_identity` adds the format and
the input's layout; `check_same_store` refuses a --resume into a store made otherwise, naming the first
difference as the flag a user types (`as_flag`).
"""
from __future__ import annotations

import importlib.metadata
from typing import Any

from pipeline import files
from pipeline.errors import ConfigError
from pipeline.inputs.listing import Listing, normalized_path
from pipeline.job.config import FIELDS_BY_NAME, RunConfig, field_kind, flag_name, input_size
from pipeline.model import backbones, hub, keras_models
from pipeline.model.hub import LocalPreset
from pipeline.model.spec import stored_weights
from pipeline.model.weights_cache import sha256_of
from pipeline.store.fingerprint import Fingerprint
from pipeline.store.schema import PRESETS_DIR

# The packages whose versions a fingerprint reports.
_VERSIONED = ("featurize", "apache-beam", "keras", "keras-hub", "tensorflow", "numpy", "pillow", "pyarrow", "h5py")

# Fingerprint fields that do not change a single vector: versions are reported, not enforced.
_NOT_COMPARED = ("versions",)
# Fingerprint fields newer than some stores, and what a store without one was made with.
_BEFORE_THE_FIELD = {"resize_in": "host"}


# Stored settings whose flag is not their own name (the fingerprint's and the store identity's names).
_FLAG_OF = {"backbone": "model", "input_size": "image_size"}


def preset_folder(preset: LocalPreset) -> str:
    """Where a run copies its preset, relative to the store (the fingerprint's weights)."""
    return f"{PRESETS_DIR}/{preset.files.digest[:16]}"


def weights_digest(config: RunConfig) -> str | None:
    """sha256 of a weights file (None for imagenet / none); checks --weights-sha256 when given."""
    weights = config.weights_file
    if weights is None:
        return None
    if config.weights_sha256 and not files.is_local(weights):
        return config.weights_sha256  # remote: the workers verify their copies, no need to read it here too
    digest = sha256_of(weights)
    if config.weights_sha256 and digest != config.weights_sha256:
        raise ConfigError(f"weights_sha256 {config.weights_sha256} does not match {config.weights!r}, "
                          f"whose sha256 is {digest}")
    return digest


def output_dims(config: RunConfig, preset: LocalPreset | None = None) -> dict[str, int]:
    """{output name: feature dimension}; building the model only when intermediate layers are asked for.
    With --predictions the one vector is the classifier's input (see Backbone.classifier_dim)."""
    if preset is not None:
        return hub.output_dims(preset.info, config.layers, config.pooling)
    backbone = backbones.BACKBONES[config.model]
    if config.predictions > 0:
        return {keras_models.EMBEDDING: backbone.classifier_dim}
    count = len(config.pooling) * len(config.layers or [None])
    if not config.layers:
        return {keras_models.output_name(None, p, count, backbone=backbone): backbone.dim for p in config.pooling}
    available = dict(keras_models.list_layers(backbone, input_size(config)))
    for layer in config.layers:
        if layer not in available:
            raise ConfigError(f"layers {layer!r} is not a layer of {config.model} with a spatial output; "
                              f"valid: {', '.join(available)}")
    return {keras_models.output_name(layer, pooling, count): int(available[layer][-1])
            for layer in config.layers for pooling in config.pooling}


def run_fingerprint(config: RunConfig, outputs: dict[str, int], weights_sha256: str | None,
                    preset: LocalPreset | None = None) -> Fingerprint:
    """What decides this run's numbers, built once: the store's JSON (`to_json`), and the model and decode
    specs the workers compute with (`model_spec`, `decode_spec`), so both are what the store records."""
    if preset is not None:  # a keras-hub model: its weights are the preset's files, copied into the store
        info = preset.info
        return Fingerprint(
            backbone=config.model, weights=preset_folder(preset), weights_sha256=preset.files.digest,
            input_size=tuple(config.image_size or info.image_size), resize=config.resize or info.resize,
            interpolation=config.interpolation or info.interpolation, jpeg_draft=config.jpeg_draft,
            exif_transpose=config.exif_transpose, resize_in=config.resize_in, preprocess=info.preprocess,
            layers=tuple(config.layers) if config.layers else None, pooling=tuple(config.pooling),
            gem_p=config.gem_p if "gem" in config.pooling else None, l2_normalize=config.l2_normalize,
            outputs=outputs, dtype=config.dtype, precision=config.precision, keras_backend=config.keras_backend,
            family=info.family.name, versions={name: package_version(name) for name in _VERSIONED})
    return Fingerprint(
        backbone=config.model,
        weights=stored_weights(config.weights),
        weights_sha256=weights_sha256,
        weights_ordering=config.weights_ordering if weights_sha256 else None,
        predictions=config.predictions,
        input_size=tuple(input_size(config)),
        resize=config.resize or "squash",
        interpolation=config.interpolation or "bilinear",
        jpeg_draft=config.jpeg_draft,
        exif_transpose=config.exif_transpose,
        resize_in=config.resize_in,
        preprocess=backbones.BACKBONES[config.model].preprocess,
        layers=tuple(config.layers) if config.layers else None,
        pooling=tuple(config.pooling),
        gem_p=config.gem_p if "gem" in config.pooling else None,
        l2_normalize=config.l2_normalize,
        outputs=outputs,
        dtype=config.dtype,
        precision=config.precision,
        keras_backend=config.keras_backend,
        versions={name: package_version(name) for name in _VERSIONED},
    )


def store_identity(config: RunConfig, fingerprint: dict[str, Any], listing: Listing) -> dict[str, Any]:
    """What a store is, written before its first unit and checked by every --resume."""
    return {"fingerprint": fingerprint, "format": config.format, "layout": listing.layout,
            "key_root": normalized_path(listing.root) if listing.root else "",
            "record_fields": [config.image_field, config.key_field], "featurize": package_version("featurize")}


def check_same_store(output: str, state: dict[str, Any], wanted: dict[str, Any]) -> None:
    """--resume into a store made with another configuration is refused, naming the first difference."""
    theirs, ours = ({**_BEFORE_THE_FIELD, **fingerprint}
                    for fingerprint in (state["fingerprint"], wanted["fingerprint"]))
    differences = [(f"{name}", theirs.get(name), ours.get(name)) for name in sorted(set(theirs) | set(ours))
                   if name not in _NOT_COMPARED and theirs.get(name) != ours.get(name)]
    if theirs.get("weights_sha256") and theirs.get("weights_sha256") == ours.get("weights_sha256"):
        differences = [d for d in differences if d[0] != "weights"]  # the same file at another path
    differences += [(name, state.get(name, default), wanted[name])
                    for name, default in (("format", None), ("layout", None), ("key_root", None),
                                          ("record_fields", [None, None]))
                    if state.get(name, default) != wanted[name]]
    if differences:
        name, before, now = differences[0]
        raise ConfigError(f"--resume: the store in {output!r} was made with {as_flag(name, before)} but this run "
                          f"has {as_flag(name, now)}; resume with the same configuration, or start over with "
                          f"--overwrite or a new --output")


def as_flag(name: str, value: Any) -> str:
    """A stored setting as the flag a user types: `--image-size 128x128`, not `input_size [128, 128]`.

    Settings no flag sets (derived ones: outputs, preprocess) keep their stored name."""
    if name in ("layout", "key_root"):  # what --input was: its kind, the folder its keys start below
        if name == "layout":
            return "an --input of image files" if value in ("files", "list") else f"an --input of {value} shards"
        return f"an --input whose keys start below {value!r}"
    if name == "weights_sha256":
        return f"--weights of sha256 {value}"
    if name == "record_fields":  # [image field, key field]
        image, key = value
        return " ".join(f"--{flag} {v}" for flag, v in (("image-field", image), ("key-field", key)) if v) or \
            "the default --image-field and --key-field"
    field = FIELDS_BY_NAME.get(_FLAG_OF.get(name, name))
    if field is None:
        return f"{name} {value!r}"
    flag = flag_name(field)
    if isinstance(value, bool) or field_kind(field.name)[0] is bool:
        return flag if bool(value) != field.default else f"without {flag}"
    if value is None:
        return f"without {flag}"
    if name == "input_size":
        return f"{flag} {value[0]}x{value[1]}"
    if isinstance(value, (list, tuple)):
        return f"{flag} {','.join(str(v) for v in value)}"
    return f"{flag} {value}"


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
