"""The run configuration: YAML preset + command-line flags (flags win), validated up front.

Every problem is found before a pipeline is built and reported as one sentence naming
the field, the value and what would be valid (`ConfigError`); the CLI turns it into
exit code 2 without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import yaml

from pipeline import backbones
from pipeline.images import DEFAULT_MAX_PIXELS, INTERPOLATIONS, RESIZE_POLICIES

FORMATS = ("parquet", "hdf5")
DTYPES = ("float32", "float16")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODEL_SHARING = ("process", "machine")


class ConfigError(ValueError):
    """A configuration problem, phrased as one sentence for the user."""


@dataclass(frozen=True)
class RunConfig:
    input: str
    output: str
    model: str = "ResNet50"
    weights: str = "imagenet"
    layers: tuple[str, ...] | None = None
    pooling: tuple[str, ...] = ("avg",)
    gem_p: float = 3.0
    l2_normalize: bool = False
    image_size: tuple[int, int] | None = None  # (height, width); None: the backbone's default
    resize: str = "squash"
    interpolation: str = "bilinear"
    jpeg_draft: bool = True
    exif_transpose: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    batch_size: int = 32
    min_batch_size: int | None = None
    format: str = "parquet"
    dtype: str = "float32"
    overwrite: bool = False
    tf_threads: int | None = None
    keras_backend: str = "tensorflow"
    weights_sha256: str | None = None
    precision: str = "float32"
    jit_compile: bool = False
    model_sharing: str = "process"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}


FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def _suggest(value: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _csv(value: Any) -> tuple[str, ...] | None:
    """`"a, b,a"` or `[a, b]` -> ("a", "b"): order kept, repeats dropped (one output each)."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is not a number")


def parse_image_size(value: Any) -> tuple[int, int] | None:
    """`224`, `"224"`, `"240x320"` (height x width) or `[240, 320]` -> (height, width)."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)):
            parts = [int(v) for v in value]
        else:
            parts = [int(v) for v in str(value).lower().replace(",", "x").split("x")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"image_size {value!r} is not a size; give one number (224) or HEIGHTxWIDTH (240x320)")
    return parts[0], parts[1]


def _int_or_none(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is not a whole number")


def load_preset(path: str) -> dict[str, Any]:
    """A YAML mapping of field names (dashes or underscores); unknown fields are an error."""
    if not os.path.isfile(path):
        raise ConfigError(f"config {path!r} does not exist; give the path of a YAML preset such as configs/resnet50-avg.yaml")
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path!r} is not valid YAML ({str(exc).splitlines()[0]})")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path!r} must be a YAML mapping of field: value")
    preset = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    for name in preset:
        if name not in FIELDS:
            raise ConfigError(f"config {path!r} has unknown field {name!r}{_suggest(name, sorted(FIELDS))}; "
                              f"valid fields: {', '.join(sorted(FIELDS))}")
    return preset


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `featurize run` flags. Defaults are None so a preset's values survive unless a flag is given."""
    a = parser.add_argument
    a("--input", help="folder (recursive), glob of images, or tar shards: 'shards/train-{000000..000127}.tar'")
    a("--output", help="output directory (any Beam filesystem)")
    a("--config", help="YAML preset; flags override its values")
    a("--model", help="backbone name, see `featurize models` (default ResNet50)")
    a("--weights", help="imagenet (default), none, or a local .h5 / .weights.h5 file (full or notop)")
    a("--layers", help="comma-separated layer names (default: the backbone's last layer)")
    a("--pooling", help="comma-separated poolings: avg, max, gem (default avg)")
    a("--gem-p", dest="gem_p", type=float, help="GeM exponent p (default 3)")
    a("--l2-normalize", dest="l2_normalize", action="store_true", default=None, help="L2-normalise every output")
    a("--image-size", dest="image_size", help="model input: 224 or HEIGHTxWIDTH (default: the backbone's)")
    a("--resize", help=f"resize policy: {', '.join(RESIZE_POLICIES)} (default squash)")
    a("--interpolation", help=f"{', '.join(INTERPOLATIONS)} (default bilinear; nearest = Keras load_img)")
    a("--no-jpeg-draft", dest="jpeg_draft", action="store_false", default=None,
      help="decode JPEGs at full size even when downscaling")
    a("--no-exif-transpose", dest="exif_transpose", action="store_false", default=None,
      help="ignore EXIF orientation")
    a("--max-pixels", dest="max_pixels", help="decompression-bomb limit in pixels, or none (default Pillow's)")
    a("--batch-size", dest="batch_size", type=int, help="images per model call (default 32)")
    a("--min-batch-size", dest="min_batch_size", type=int, help="smallest batch RunInference may form (default = batch size)")
    a("--format", help="parquet (default) or hdf5")
    a("--dtype", help="float32 (default) or float16")
    a("--overwrite", action="store_true", default=None, help="replace a previous featurize output in --output")
    a("--tf-threads", dest="tf_threads", type=int, help="TensorFlow intra-op threads per worker (default: cores / local workers)")
    a("--keras-backend", dest="keras_backend", help="tensorflow (default), jax or torch (where installed on the workers)")
    a("--weights-sha256", dest="weights_sha256", help="expected sha256 of --weights; workers verify their copy")
    a("--precision", help="float32 (default), mixed_float16 (GPUs) or mixed_bfloat16 (TPUs, recent CPUs/GPUs)")
    a("--jit-compile", dest="jit_compile", action="store_true", default=None, help="compile the model with XLA")
    a("--model-sharing", dest="model_sharing",
      help="process (default: one model per worker process) or machine (one model per machine, shared by its processes)")
    a("--no-progress", dest="progress", action="store_false", default=None,
      help="no progress line on local runs")


def resolve(flags: argparse.Namespace) -> RunConfig:
    """defaults < preset < flags, normalised and validated."""
    values: dict[str, Any] = load_preset(flags.config) if getattr(flags, "config", None) else {}
    values.update({k: v for k, v in vars(flags).items() if k in FIELDS and v is not None})
    for required in ("input", "output"):
        if not values.get(required):
            raise ConfigError(f"{required} is missing; give --{required} PATH or set it in the --config preset")
    if "layers" in values:
        values["layers"] = _csv(values["layers"]) or None
    if "pooling" in values:
        values["pooling"] = _csv(values["pooling"])
    if "image_size" in values:
        values["image_size"] = parse_image_size(values["image_size"])
    for name in ("max_pixels", "batch_size", "min_batch_size", "tf_threads"):
        if name in values:
            values[name] = _int_or_none(name, values[name])
    if values.get("batch_size") is None:
        values.pop("batch_size", None)
    if "gem_p" in values:
        values["gem_p"] = _float("gem_p", values["gem_p"])
    for name in ("l2_normalize", "jpeg_draft", "exif_transpose", "overwrite", "jit_compile", "progress"):
        if name in values and not isinstance(values[name], bool):
            raise ConfigError(f"{name} {values[name]!r} must be true or false")
    for name in ("input", "output", "model", "weights", "resize", "interpolation", "format", "dtype", "keras_backend",
                 "precision", "model_sharing"):
        if name in values:
            values[name] = str(values[name])
    config = RunConfig(**values)
    validate(config)
    return config


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} {value!r} is not valid{_suggest(value, valid)}; choose one of: {', '.join(valid)}")


def validate(config: RunConfig) -> None:
    """Everything that can be checked without reading images; raises ConfigError."""
    if config.model not in backbones.BACKBONES:
        raise ConfigError(f"model {config.model!r} is not a known backbone{_suggest(config.model, list(backbones.BACKBONES))}; "
                          f"run `featurize models` to list all {len(backbones.BACKBONES)}")
    backbone = backbones.BACKBONES[config.model]
    if not config.pooling:
        raise ConfigError(f"pooling is empty; choose from: {', '.join(backbones.POOLINGS)}")
    for pooling in config.pooling:
        _check_choice("pooling", pooling, backbones.POOLINGS)
    if config.gem_p <= 0:
        raise ConfigError(f"gem_p {config.gem_p} must be > 0")
    _check_choice("resize", config.resize, RESIZE_POLICIES)
    _check_choice("interpolation", config.interpolation, list(INTERPOLATIONS))
    _check_choice("format", config.format, FORMATS)
    _check_choice("dtype", config.dtype, DTYPES)
    _check_choice("keras_backend", config.keras_backend, KERAS_BACKENDS)
    _check_choice("precision", config.precision, PRECISIONS)
    _check_choice("model_sharing", config.model_sharing, MODEL_SHARING)
    height, width = input_size(config)
    if min(height, width) < backbone.min_size:
        raise ConfigError(f"image_size {height}x{width} is below {config.model}'s minimum of "
                          f"{backbone.min_size}x{backbone.min_size}; use at least {backbone.min_size}")
    weights = backbones.weights_argument(config.weights)
    if weights not in (None, "imagenet"):
        if not weights.endswith(".h5"):
            raise ConfigError(f"weights {config.weights!r} is not valid; give imagenet, none, or a .h5 / .weights.h5 file")
        if not _exists(weights):
            raise ConfigError(f"weights {config.weights!r} does not exist; give imagenet, none, or the path or URI "
                              f"of a .h5 / .weights.h5 file")
    if config.weights_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", config.weights_sha256):
        raise ConfigError(f"weights_sha256 {config.weights_sha256!r} is not a sha256; give 64 lowercase hex digits")
    if config.batch_size < 1:
        raise ConfigError(f"batch_size {config.batch_size} must be at least 1")
    if config.min_batch_size is not None and not 1 <= config.min_batch_size <= config.batch_size:
        raise ConfigError(f"min_batch_size {config.min_batch_size} must be between 1 and batch_size ({config.batch_size})")
    if config.max_pixels is not None and config.max_pixels < 1:
        raise ConfigError(f"max_pixels {config.max_pixels} must be positive, or none to disable the limit")
    if config.tf_threads is not None and config.tf_threads < 1:
        raise ConfigError(f"tf_threads {config.tf_threads} must be at least 1")


def _exists(uri: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(uri)
    except Exception as exc:  # a filesystem that is not installed, or no credentials
        raise ConfigError(f"weights {uri!r} cannot be reached ({type(exc).__name__}: {exc})") from None


def input_size(config: RunConfig) -> tuple[int, int]:
    if config.image_size:
        return config.image_size
    size = backbones.BACKBONES[config.model].default_size
    return size, size
