"""`run(argv)`: parse and validate the configuration, wire the stages, run, return the manifest.

This module only wires the composite transforms; everything a library user would also
need lives in them (`ReadImages`, `ExtractFeatures`, `WriteFeatures`).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline import backbones
from pipeline.config import ConfigError, RunConfig, add_run_arguments, input_size, resolve
from pipeline.handler import KerasBackboneHandler, ModelSpec
from pipeline.images import DecodeSpec
from pipeline.sinks import MANIFEST, OWNED_PATTERNS, WriteFeatures
from pipeline.sources import ReadImages, count_matches, resolve_input
from pipeline.transforms import ExtractFeatures

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_VERSIONED = ("featurize", "apache-beam", "keras", "tensorflow", "numpy", "pillow", "pyarrow", "h5py")


def model_spec(config: RunConfig) -> ModelSpec:
    return ModelSpec(config.model, input_size(config), backbones.weights_argument(config.weights),
                     config.layers, config.pooling, config.gem_p, config.l2_normalize)


def decode_spec(config: RunConfig) -> DecodeSpec:
    height, width = input_size(config)
    return DecodeSpec(height, width, config.resize, config.interpolation, config.max_pixels,
                      config.jpeg_draft, config.exif_transpose)


def output_dims(config: RunConfig) -> dict[str, int]:
    """{output name: feature dimension}; building the model only when intermediate layers are asked for."""
    backbone = backbones.BACKBONES[config.model]
    count = len(config.pooling) * len(config.layers or [None])
    if not config.layers:
        return {backbones.output_name(None, p, count, backbone=backbone): backbone.dim for p in config.pooling}
    available = dict(backbones.list_layers(backbone, input_size(config)))
    for layer in config.layers:
        if layer not in available:
            raise ConfigError(f"layers {layer!r} is not a layer of {config.model} with a spatial output; "
                              f"valid: {', '.join(available)}")
    return {backbones.output_name(layer, pooling, count): int(available[layer][-1])
            for layer in config.layers for pooling in config.pooling}


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint(config: RunConfig, outputs: dict[str, int]) -> dict[str, Any]:
    """What decides the numbers: two stores with equal fingerprints are comparable vector for vector."""
    spec = model_spec(config)
    weights_file = spec.weights not in (None, "imagenet")
    return {
        "backbone": config.model,
        "weights": config.weights if weights_file else (spec.weights or "none"),
        "weights_sha256": sha256_of(spec.weights) if weights_file else None,
        "input_size": list(spec.input_size),
        "resize": config.resize,
        "interpolation": config.interpolation,
        "jpeg_draft": config.jpeg_draft,
        "exif_transpose": config.exif_transpose,
        "preprocess": backbones.BACKBONES[config.model].preprocess,
        "layers": list(config.layers) if config.layers else None,
        "pooling": list(config.pooling),
        "gem_p": config.gem_p if "gem" in config.pooling else None,
        "l2_normalize": config.l2_normalize,
        "outputs": outputs,
        "dtype": config.dtype,
        "keras_backend": config.keras_backend,
        "versions": {name: _version(name) for name in _VERSIONED},
    }


def check_paths(config: RunConfig) -> None:
    """Input must exist and match something; output must be empty unless --overwrite."""
    try:
        spec = resolve_input(config.input)
        found = count_matches(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # e.g. a filesystem that is not installed
        raise ConfigError(f"input {config.input!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not found:
        kind = "tar shards" if spec.layout == "tar" else "image files"
        raise ConfigError(f"input {config.input!r} matches no {kind}; give a folder of images, a glob, "
                          f"or tar shards like 'shards/train-{{000000..000127}}.tar'")
    existing = FileSystems.match([FileSystems.join(config.output, "**")])[0].metadata_list \
        if FileSystems.exists(config.output) else []
    if existing and not config.overwrite:
        raise ConfigError(f"output {config.output!r} is not empty; pass --overwrite to replace a previous "
                          f"featurize output there, or choose an empty directory")


def clear_previous_output(output: str) -> None:
    """--overwrite removes only files featurize writes; anything else in the directory stays."""
    owned = [m.path for pattern in OWNED_PATTERNS
             for m in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list]
    if owned:
        FileSystems.delete(owned)


def local_workers(options: PipelineOptions) -> int | None:
    """How many local worker processes share this machine's cores, or None on a cluster runner."""
    runner = options.view_as(StandardOptions).runner or "FnApiRunner"
    if runner.rsplit(".", 1)[-1] not in LOCAL_RUNNERS:
        return None
    direct = options.view_as(DirectOptions)
    return (direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Any Beam flag passes through; with no --runner, the local runner on every core without Prism."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        cores = os.cpu_count() or 1
        args += ["--runner=FnApiRunner"]
        if cores > 1 and not any(a.startswith("--direct_running_mode") for a in args):
            args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={cores}"]
    return PipelineOptions(args)


def tf_threads_per_worker(config: RunConfig, options: PipelineOptions) -> int | None:
    if config.tf_threads:
        return config.tf_threads
    workers = local_workers(options)
    return max(1, (os.cpu_count() or 1) // workers) if workers else None


def build(p: beam.Pipeline, config: RunConfig, handler: KerasBackboneHandler, manifest: dict[str, Any],
          started_at: float) -> beam.PCollection:
    """Wire ReadImages -> ExtractFeatures -> WriteFeatures into `p`; returns the manifest PCollection."""
    read = p | "ReadImages" >> ReadImages(config.input)
    extracted = read["images"] | "ExtractFeatures" >> ExtractFeatures(handler, decode_spec(config), config.dtype)
    errors = (read["errors"], extracted["errors"]) | "AllErrors" >> beam.Flatten()
    inputs = (
        (read["images"] | "CountImages" >> beam.combiners.Count.Globally(),
         read["errors"] | "CountReadErrors" >> beam.combiners.Count.Globally())
        | "Counts" >> beam.Flatten()
        | "Inputs" >> beam.CombineGlobally(sum))
    return {"rows": extracted["rows"], "errors": errors, "inputs": inputs} | "WriteFeatures" >> WriteFeatures(
        config.output, manifest, started_at)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`featurize run ...` as a function: returns the manifest of the finished output.

    Raises ConfigError (before any work starts) for a bad configuration.
    """
    parser = argparse.ArgumentParser(prog="featurize run", description="Extract features from images.")
    add_run_arguments(parser)
    flags, beam_args = parser.parse_known_args(list(argv) if argv is not None else None)
    config = resolve(flags)
    check_paths(config)
    outputs = output_dims(config)
    options = pipeline_options(beam_args)
    handler = KerasBackboneHandler(
        model_spec(config), batch_size=config.batch_size, min_batch_size=config.min_batch_size,
        intra_op_threads=tf_threads_per_worker(config, options), keras_backend=config.keras_backend)
    started_at = time.time()
    manifest = {
        "format": config.format,
        "config": config.to_dict(),
        "fingerprint": fingerprint(config, outputs),
        "runner": options.view_as(StandardOptions).runner,
        "started_at": datetime.fromtimestamp(started_at, timezone.utc).isoformat(timespec="seconds"),
    }
    if config.overwrite:
        clear_previous_output(config.output)
    with beam.Pipeline(options=options) as p:
        build(p, config, handler, manifest, started_at)
    with FileSystems.open(FileSystems.join(config.output, MANIFEST)) as handle:
        return json.load(handle)
