"""The run configuration: YAML preset + command-line flags (flags win), validated up front.

Each option is declared once, as a `RunConfig` field: its type decides how preset and flag
values are converted, its metadata holds the flag's help text and any choices. The argparse
flags (`--name-with-dashes`; `--no-name` for a boolean that defaults to true), the preset
keys (dashes or underscores) and the conversion are all generated from the fields.

Every problem is found before a pipeline is built and reported as one sentence naming
the field, the value and what would be valid (`ConfigError`); the CLI turns it into
exit code 2 without a traceback.

The command line itself (the flags generated from the fields, and Beam's own arguments split from
them) is pipeline.job.runner's.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import yaml

from pipeline import files
from pipeline.errors import ConfigError
from pipeline.images import DEFAULT_MAX_PIXELS, INTERPOLATIONS, RESIZE_PLACES, RESIZE_POLICIES
from pipeline.model import backbones
from pipeline.model.hub import is_hub, preset_of
from pipeline.model.spec import weights_argument

FORMATS = ("parquet", "hdf5")
DTYPES = ("float32", "float16")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODEL_SHARING = ("process", "machine")
WEIGHTS_ORDERINGS = ("auto", "th", "tf")


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[str] = ()) -> Any:
    """A RunConfig field that is also a `featurize run` flag and a preset key.

    `choices`: the valid values (of each item, for a list field); validate() checks them
    with a did-you-mean.
    """
    return field(default=default, metadata={"help": help, "choices": tuple(choices)})


@dataclass(frozen=True)
class RunConfig:
    input: str = option(help="folder (recursive), glob of images, a path list (.txt, .csv, .tsv), or shards: "
                             "'shards/train-{000000..000127}.tar' (WebDataset), '*.tfrecord[.gz]', "
                             "'mnist-train.tfrecord-*' (TFDS), '*.parquet', '*.arrow', "
                             "or a Hugging Face save_to_disk folder")
    output: str = option(help="output directory (any Beam filesystem)")
    model: str = option("ResNet50", help="backbone name, see `featurize models` (default ResNet50), or hub:PRESET: a "
                                         "keras-hub CLIP, SigLIP, DINOv2/v3 or ViT preset name, folder or URI "
                                         "(`featurize models --hub`)")
    # Normalised once (__post_init__): "imagenet", None (none: random init) or a file's path, ~ expanded.
    weights: str | None = option("imagenet",
                                 help="imagenet (default), none, or a local .h5 / .weights.h5 file (full or notop)")
    layers: tuple[str, ...] | None = option(None,
                                            help="comma-separated layer names (default: the backbone's last layer)")
    pooling: tuple[str, ...] = option(("avg",), choices=backbones.ALL_POOLINGS,
                                      help="comma-separated poolings: avg, max, gem (default avg); a hub model: "
                                           "model (its own image embedding, the default), or avg, max, gem over "
                                           "its patch tokens")
    gem_p: float = option(3.0, help="GeM exponent p (default 3)")
    l2_normalize: bool = option(False, help="L2-normalise every output")
    # (height, width); None: the backbone's default
    image_size: tuple[int, int] | None = option(None, help="model input: 224 or HEIGHTxWIDTH (default: the backbone's)")
    # None: squash / bilinear, or what a hub preset's image converter does (its crop and interpolation)
    resize: str | None = option(None, choices=RESIZE_POLICIES,
                                help=f"resize policy: {', '.join(RESIZE_POLICIES)} (default squash; a hub model: "
                                     f"its image converter's)")
    interpolation: str | None = option(None, choices=list(INTERPOLATIONS),
                                       help=f"{', '.join(INTERPOLATIONS)} (default bilinear, nearest = Keras "
                                            f"load_img; a hub model: its image converter's)")
    resize_in: str = option("host", choices=RESIZE_PLACES,
                            help="where images are resized to the model's input: host (default: Pillow, bit parity "
                                 "with keras.utils.load_img) or model (the workers only decode, the compiled model "
                                 "resamples with the same filter in float: less CPU per image, vectors close to "
                                 "but not equal to host's)")
    jpeg_draft: bool = option(True, help="decode JPEGs at full size even when downscaling")
    exif_transpose: bool = option(True, help="ignore EXIF orientation")
    max_pixels: int | None = option(DEFAULT_MAX_PIXELS,
                                    help="decompression-bomb limit in pixels, or none (default Pillow's)")
    batch_size: int = option(32, help="images per model call (default 32)")
    min_batch_size: int | None = option(None, help="smallest batch ExtractFeatures may form in a graph of your own (default = batch size)")
    format: str = option("parquet", choices=FORMATS, help="parquet (default) or hdf5")
    dtype: str = option("float32", choices=DTYPES, help="float32 (default) or float16")
    overwrite: bool = option(False, help="replace a previous featurize output in --output")
    tf_threads: int | None = option(None,
                                    help="TensorFlow intra-op threads per worker (default: cores / local workers)")
    keras_backend: str = option("tensorflow", choices=KERAS_BACKENDS,
                                help="tensorflow (default), jax or torch (where installed on the workers)")
    weights_sha256: str | None = option(None, help="expected sha256 of --weights; workers verify their copy")
    weights_ordering: str = option("auto", choices=WEIGHTS_ORDERINGS,
                                   help="kernel ordering of a legacy --weights file: auto (default: from the file "
                                        "name and the shapes), th (Theano: transposed and flipped) or tf")
    predictions: int = option(0, help="top-K ImageNet classes per image (predicted_ids, predicted_names, "
                                      "predicted_scores) from the model's classifier (default 0: none)")
    class_index: str | None = option(None, help="class index JSON for --predictions (default: ImageNet's, "
                                                "shipped with featurize)")
    image_field: str | None = option(None, help="TFRecord feature / Parquet column holding the image bytes "
                                                "(default: the first of image/encoded, jpg, jpeg, png, webp, image)")
    key_field: str | None = option(None, help="TFRecord feature / Parquet column holding the key "
                                              "(default: key, else image/filename, else SHARD:INDEX)")
    uri_column: str | None = option(None, help="column of a .csv / .tsv path list holding the paths or URLs "
                                               "(default: the first column)")
    precision: str = option("float32", choices=PRECISIONS,
                            help="float32 (default), mixed_float16 (GPUs) or mixed_bfloat16 (TPUs, recent CPUs/GPUs)")
    jit_compile: bool = option(False, help="compile the model with XLA")
    model_sharing: str = option("process", choices=MODEL_SHARING,
                                help="process (default: one model per worker process) or machine "
                                     "(one model per machine, shared by its processes)")
    progress: bool = option(True, help="no progress line on local runs")
    resume: bool = option(False, help="continue an interrupted or extend a finished output with the same "
                                      "configuration: only work units not yet committed are processed")
    dry_run: bool = option(False, help="list the inputs and the work units a run would process (and how many "
                                       "--resume would skip), load no model, write nothing")
    unit_size: int = option(1000, help="plain files per work unit (the commit and resume granularity; "
                                       "tar shards are one unit each)")
    max_error_rate: float | None = option(None, help="stop the run (exit 1, no manifest) once more than this "
                                                     "fraction of at least min(1000, all) inputs are error rows")
    verbose: bool = option(False, help="show TensorFlow's and Beam's own log lines on the terminal "
                                       "(they always go to the run's log file)")

    def __post_init__(self):
        object.__setattr__(self, "weights", weights_argument(self.weights))

    @property
    def weights_file(self) -> str | None:
        """--weights when it names a file (its path), else None."""
        return None if self.weights in (None, "imagenet") else self.weights

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}


FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
FIELDS_BY_NAME = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def field_kind(name: str) -> tuple[Any, bool]:
    """A field's value type and whether it may be None: `int | None` -> (int, True)."""
    args = typing.get_args(_HINTS[name])
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return _HINTS[name], False


def flag_name(f: dataclasses.Field) -> str:
    """The flag of a field: `--batch-size`; a boolean that defaults to true is switched off by `--no-...`."""
    dashed = f.name.replace("_", "-")
    return f"--no-{dashed}" if field_kind(f.name)[0] is bool and f.default is True else f"--{dashed}"


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


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):  # flags are store_true/false; a preset must say true or false
        raise ConfigError(f"{name} {value!r} must be true or false")
    return value


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


# How a preset or flag value becomes a field's value type (the type without `| None`).
_CONVERT: dict[Any, Callable[[str, Any], Any]] = {
    str: lambda name, value: str(value),
    bool: _bool,
    int: _int_or_none,
    float: _float,
    tuple[str, ...]: lambda name, value: _csv(value),
    tuple[int, int]: lambda name, value: parse_image_size(value),
}


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


def _convert(name: str, value: Any) -> Any:
    kind, optional = field_kind(name)
    if value is None and optional:
        return None
    converted = _CONVERT[kind](name, value)
    if optional and converted == ():  # an empty list (`--layers ''`) means none: the default
        return None
    return converted


def resolve(flags: argparse.Namespace) -> RunConfig:
    """defaults < preset < flags, normalised and validated."""
    values: dict[str, Any] = load_preset(flags.config) if getattr(flags, "config", None) else {}
    values.update({k: v for k, v in vars(flags).items() if k in FIELDS and v is not None})
    for f in dataclasses.fields(RunConfig):
        if f.default is dataclasses.MISSING and not values.get(f.name):
            raise ConfigError(f"{f.name} is missing; give --{f.name} PATH or set it in the --config preset")
    if is_hub(str(values.get("model", ""))):
        if "weights" in values:  # a preset carries its weights: a --weights would be silently unused
            raise ConfigError(f"weights {values['weights']!r} applies to keras.applications models; "
                              f"{values['model']} carries its own weights, so drop --weights")
        values.setdefault("pooling", backbones.MODEL_POOLING)
    converted = {name: _convert(name, value) for name, value in values.items()}
    # None for a field that cannot be None (`batch_size: none`) means its default.
    config = RunConfig(**{k: v for k, v in converted.items() if v is not None or field_kind(k)[1]})
    validate(config)
    return config


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} {value!r} is not valid{_suggest(value, valid)}; choose one of: {', '.join(valid)}")


def validate(config: RunConfig) -> None:
    """Everything that can be checked without reading images; raises ConfigError."""
    _check_fields(config)
    if is_hub(config.model):
        _validate_hub(config)
    else:
        _validate_application(config)


def _check_fields(config: RunConfig) -> None:
    """What holds for every model: choices, and numbers in range."""
    if not config.pooling:
        raise ConfigError(f"pooling is empty; choose from: {', '.join(backbones.ALL_POOLINGS)}")
    for f in dataclasses.fields(config):
        if f.metadata["choices"]:
            value = getattr(config, f.name)
            for item in value if isinstance(value, tuple) else (value,):
                if item is not None:
                    _check_choice(f.name, item, f.metadata["choices"])
    if config.gem_p <= 0:
        raise ConfigError(f"gem_p {config.gem_p} must be > 0")
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
    if config.max_error_rate is not None and not 0 <= config.max_error_rate < 1:
        raise ConfigError(f"max_error_rate {config.max_error_rate} must be a fraction from 0 to below 1 "
                          f"(0.05 stops a run once more than 5% of its inputs fail)")
    if config.predictions < 0:
        raise ConfigError(f"predictions {config.predictions} must be 0 (none) or a number of classes such as 5")
    if config.unit_size < 1:
        raise ConfigError(f"unit_size {config.unit_size} must be at least 1")
    if config.resize_in == "model" and config.interpolation == "nearest":
        raise ConfigError("interpolation 'nearest' cannot be combined with resize_in 'model', which resamples with "
                          "a filter; nearest is for bit parity with Keras's loader: use resize_in host, or "
                          f"interpolation {', '.join(i for i in INTERPOLATIONS if i != 'nearest')}")
    if config.resume and config.overwrite:
        raise ConfigError("resume and overwrite exclude each other; pass --resume to continue the output in "
                          "--output, or --overwrite to replace it")


def _validate_hub(config: RunConfig) -> None:
    """A keras-hub model: what needs no preset (the preset's own checks are the launcher's, pipeline.job.checks)."""
    if not preset_of(config.model):
        raise ConfigError("model 'hub:' names no preset; give hub:PRESET, e.g. hub:clip_vit_base_patch16 or a "
                          "folder keras-hub's save_to_preset wrote (`featurize models --hub` lists them)")
    for name, given in (("predictions", config.predictions), ("class_index", config.class_index),
                        ("weights_sha256", config.weights_sha256)):
        if given:
            raise ConfigError(f"{name} {given!r} applies to keras.applications models, not to {config.model}; "
                              f"drop --{name.replace('_', '-')}")
    if config.weights_ordering != "auto":
        raise ConfigError(f"weights_ordering {config.weights_ordering!r} applies to legacy .h5 weights files only, "
                          f"not to {config.model}; drop --weights-ordering")


def _validate_application(config: RunConfig) -> None:
    """A keras.applications backbone."""
    if config.model not in backbones.BACKBONES:
        raise ConfigError(f"model {config.model!r} is not a known backbone{_suggest(config.model, list(backbones.BACKBONES))}; "
                          f"run `featurize models` to list all {len(backbones.BACKBONES)}")
    backbone = backbones.BACKBONES[config.model]
    if backbones.MODEL_POOLING in config.pooling:
        raise ConfigError(f"pooling {backbones.MODEL_POOLING!r} is a hub model's own embedding; {config.model} "
                          f"pools its feature map: choose from {', '.join(backbones.POOLINGS)}")
    height, width = input_size(config)
    if min(height, width) < backbone.min_size:
        raise ConfigError(f"image_size {height}x{width} is below {config.model}'s minimum of "
                          f"{backbone.min_size}x{backbone.min_size}; use at least {backbone.min_size}")
    weights = config.weights_file
    if weights is not None:
        if not weights.endswith(".h5"):
            raise ConfigError(f"weights {config.weights!r} is not valid; give imagenet, none, or a .h5 / .weights.h5 file")
        try:
            found = files.exists(weights)
        except Exception as exc:  # noqa: BLE001 - a filesystem that is not installed, or no credentials: one sentence
            raise ConfigError(f"weights {weights!r} cannot be reached ({type(exc).__name__}: {exc})") from None
        if not found:
            raise ConfigError(f"weights {config.weights!r} does not exist; give imagenet, none, or the path or URI "
                              f"of a .h5 / .weights.h5 file")
    if config.class_index is not None and not config.predictions:
        raise ConfigError(f"class_index {config.class_index!r} is used by --predictions only; add --predictions 5 "
                          f"or drop --class-index")
    if config.class_index is not None and not os.path.isfile(config.class_index):
        raise ConfigError(f"class_index {config.class_index!r} does not exist; give the path of a JSON file "
                          f"like Keras's imagenet_class_index.json")
    if config.predictions > 0:  # the embedding is then the classifier's input: no layer or pooling to choose
        if config.layers:
            raise ConfigError(f"layers {','.join(config.layers)} cannot be combined with --predictions, whose "
                              f"embedding is the classifier's input; drop --layers or --predictions")
        if tuple(config.pooling) != ("avg",):
            raise ConfigError(f"pooling {','.join(config.pooling)} cannot be combined with --predictions, whose "
                              f"embedding is the classifier's input after the model's own pooling; use avg (the "
                              f"default) or drop --predictions")
        if backbone.flatten_head and (height, width) != (backbone.default_size,) * 2:
            raise ConfigError(f"image_size {height}x{width} does not fit {config.model}'s classifier, which flattens "
                              f"its feature map; use {backbone.default_size} (the default) with --predictions")
    if config.weights_ordering != "auto" and (weights is None or weights.endswith(".weights.h5")):
        raise ConfigError(f"weights_ordering {config.weights_ordering!r} applies to legacy .h5 weights files only, "
                          f"not to weights {config.weights!r}; drop --weights-ordering")


def input_size(config: RunConfig) -> tuple[int, int]:
    if config.image_size:
        return config.image_size
    size = backbones.BACKBONES[config.model].default_size
    return size, size
