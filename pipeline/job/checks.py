"""The launcher's checks: everything that stops a run with one sentence before any worker starts.

The input (it must list something; options only another kind of input reads are refused; a
record shard's image field), the output (not empty without --resume or --overwrite; a resumed
store's identity must match), and the model (built once here where that is cheap).
"""
from __future__ import annotations

from typing import Any, Iterator

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import files
from pipeline.elements import RecordFields
from pipeline.errors import ConfigError
from pipeline.inputs.layouts import LAYOUT_NAMES, RECORD_LAYOUTS
from pipeline.inputs.listing import Listing, list_inputs, resolve_input
from pipeline.inputs.record_shards import check_record_fields
from pipeline.job.config import RunConfig
from pipeline.job.identity import check_same_store
from pipeline.job.journal import iter_committed_units, read_store_state
from pipeline.job.runner import local_workers
from pipeline.logs import native_stderr_to_log
from pipeline.model.backbones import MODEL_POOLING
from pipeline.model.failures import ModelLoadError
from pipeline.model.hub import FAMILIES, LocalPreset, PresetUnavailable, block_number, is_hub, preset_of
from pipeline.model.preflight import check_model
from pipeline.model.runtime import tensorflow_without_jax
from pipeline.model.spec import ModelSpec
from pipeline.store.schema import STORE_STATE


def _in_words(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_layout_options(config: RunConfig, layout: str) -> None:
    """Options that only one kind of input reads are refused for the others, not ignored."""
    for name, layouts in (("image_field", RECORD_LAYOUTS), ("key_field", RECORD_LAYOUTS),
                          ("uri_column", ("list",))):
        if getattr(config, name) is not None and layout not in layouts:
            raise ConfigError(f"{name} {getattr(config, name)!r} applies to {_in_words([LAYOUT_NAMES[l] for l in layouts])} "
                              f"only; input {config.input!r} is {LAYOUT_NAMES[layout]}")


def _check_record_fields(config: RunConfig, listing: Listing) -> None:
    """The first readable shard must have the image field, in a type that holds an image (and a
    --key-field that was asked for)."""
    shard = next((uri for _, uri, _ in listing.inputs() if uri not in listing.missing), None)
    if shard is not None:
        check_record_fields(listing.layout, shard, RecordFields(config.image_field, config.key_field))


def check_input(config: RunConfig) -> Listing:
    """List the input (once, on the launcher); it must hold something."""
    try:
        spec = resolve_input(config.input)
        _check_layout_options(config, spec.layout)
        listing = list_inputs(spec, config.uri_column)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a filesystem that is not installed: said in one sentence
        raise ConfigError(f"input {config.input!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if listing.count == len(listing.missing) and not listing.duplicate_count:
        skipped = f" ({listing.skipped_count} other files skipped)" if listing.skipped_count else ""
        raise ConfigError(f"input {config.input!r} matches no {LAYOUT_NAMES[listing.layout]}{skipped}; give a folder "
                          f"of images, a glob, a path list (.txt/.csv/.tsv), or shards like "
                          f"'shards/train-{{000000..000127}}.tar' (.tar, .tfrecord, .parquet, .arrow)")
    if listing.layout in RECORD_LAYOUTS:
        _check_record_fields(config, listing)
    return listing


def output_is_empty(output: str) -> bool:
    # A match, not exists(): on object stores a "folder" is a prefix, which exists() never sees.
    return not FileSystems.match([FileSystems.join(output, "**")], limits=[1])[0].metadata_list


def committed_for(config: RunConfig, identity: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The journal entries a run may reuse, read as they are consumed: none unless --resume (or
    --dry-run) into a matching store.

    Refuses a non-empty output without --resume or --overwrite, and a --resume into a store
    made with another configuration or into a folder that is not a featurize store.
    """
    if config.overwrite or output_is_empty(config.output):
        return iter(())
    state = read_store_state(config.output)
    if not (config.resume or config.dry_run):
        what = "an interrupted or finished featurize run" if state else "files"
        raise ConfigError(f"output {config.output!r} is not empty (it holds {what}); pass --resume to continue "
                          f"it with the same configuration, --overwrite to replace featurize's files there, "
                          f"or choose an empty directory")
    if state is None:
        raise ConfigError(f"--resume: output {config.output!r} is not a featurize store (no {STORE_STATE}); "
                          f"choose an empty directory, or --overwrite to replace featurize's files there")
    check_same_store(config.output, state, identity)
    return iter_committed_units(config.output)


def check_model_before_workers(spec: ModelSpec, options: PipelineOptions) -> None:
    """Build the model once here, so a download that fails or weights that do not fit are one
    sentence before any worker starts: ImageNet on local runs (its download lands in the cache
    the local workers use), a weights file on this machine always."""
    if is_hub(spec.backbone):  # its preset was read by check_hub_preset; its copy in the store is made by the run
        return
    local_file = spec.weights_file is not None and files.is_local(spec.weights_file)
    if not (local_file or (spec.weights == "imagenet" and local_workers(options))):
        return
    try:
        check_model(spec)
    except ModelLoadError as exc:
        raise ConfigError(exc.sentence) from None


def check_hub_preset(config: RunConfig) -> LocalPreset:
    """A hub model's preset fetched once (a folder, keras-hub's cache, or a download), its files hashed and
    its configs read; what the preset decides (input size, layers, poolings) checked in one sentence."""
    preset = preset_of(config.model)
    try:  # keras-hub loads TensorFlow: its start-up lines go to the log, as a worker's do
        with native_stderr_to_log(), tensorflow_without_jax():
            local = LocalPreset.resolve(preset)
    except PresetUnavailable as exc:
        raise ConfigError(str(exc)) from None
    info = local.info
    if config.image_size and tuple(config.image_size) != info.image_size and not info.family.any_size:
        raise ConfigError(f"image_size {config.image_size[0]}x{config.image_size[1]} does not fit {config.model}, a "
                          f"{info.family.name} model built for {info.image_size[0]}x{info.image_size[1]}; drop "
                          f"--image-size (only {', '.join(f.name for f in FAMILIES if f.any_size)} take other sizes)")
    for layer in config.layers or ():
        if not info.family.blocks:
            raise ConfigError(f"layers {layer!r}: {config.model} ({info.family.name}) offers its final output only; "
                              f"drop --layers")
        if block_number(layer, info.blocks) is None:
            raise ConfigError(f"layers {layer!r} is not a block of {config.model}; give block1 to "
                              f"block{info.blocks} (the output of that transformer block)")
    if config.layers and MODEL_POOLING in config.pooling and not info.family.class_token:
        raise ConfigError(f"pooling {MODEL_POOLING!r} of an intermediate block takes its class token, which "
                          f"{info.family.name} has not; pool its patch tokens with avg, max or gem")
    if config.resize_in == "model" and (config.interpolation or info.interpolation) == "nearest":
        raise ConfigError(f"resize_in 'model' resamples with a filter, but {config.model}'s image converter "
                          f"resizes with nearest; give --interpolation bilinear (or another filter) or drop "
                          f"--resize-in")
    return local
