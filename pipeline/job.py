"""`run(argv)`: parse and validate the configuration, wire the stages, run, return the manifest.

This module only wires the composite transforms; everything a library user would also
need lives in them (`ReadImages`, `ExtractFeatures`, `WriteFeatures`).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipeline import backbones, progress
from pipeline.config import ConfigError, RunConfig, add_run_arguments, input_size, resolve
from pipeline.handler import KerasBackboneHandler, ModelSpec
from pipeline.images import DecodeSpec
from pipeline.records import METRICS_NAMESPACE
from pipeline.sinks import MANIFEST, OWNED_PATTERNS, WriteFeatures, write_json_atomically
from pipeline.sources import ReadImages, count_matches, resolve_input
from pipeline.transforms import ExtractFeatures
from pipeline.weights import sha256_of

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_VERSIONED = ("featurize", "apache-beam", "keras", "tensorflow", "numpy", "pillow", "pyarrow", "h5py")


def model_spec(config: RunConfig, weights_sha256: str | None = None) -> ModelSpec:
    return ModelSpec(config.model, input_size(config), backbones.weights_argument(config.weights),
                     config.layers, config.pooling, config.gem_p, config.l2_normalize,
                     weights_sha256=weights_sha256, precision=config.precision)


def decode_spec(config: RunConfig) -> DecodeSpec:
    height, width = input_size(config)
    return DecodeSpec(height, width, config.resize, config.interpolation, config.max_pixels,
                      config.jpeg_draft, config.exif_transpose)


def weights_digest(config: RunConfig) -> str | None:
    """sha256 of a weights file (None for imagenet / none); checks --weights-sha256 when given."""
    weights = backbones.weights_argument(config.weights)
    if weights in (None, "imagenet"):
        return None
    if config.weights_sha256 and FileSystems.get_scheme(weights) is not None:
        return config.weights_sha256  # remote: the workers verify their copies, no need to read it here too
    digest = sha256_of(weights)
    if config.weights_sha256 and digest != config.weights_sha256:
        raise ConfigError(f"weights_sha256 {config.weights_sha256} does not match {config.weights!r}, "
                          f"whose sha256 is {digest}")
    return digest


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


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint(config: RunConfig, outputs: dict[str, int], spec: ModelSpec) -> dict[str, Any]:
    """What decides the numbers: two stores with equal fingerprints are comparable vector for vector."""
    return {
        "backbone": config.model,
        "weights": spec.weights or "none",
        "weights_sha256": spec.weights_sha256,
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
        "precision": config.precision,
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
    # A match, not exists(): on object stores a "folder" is a prefix, which exists() never sees.
    existing = FileSystems.match([FileSystems.join(config.output, "**")], limits=[1])[0].metadata_list
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
    if direct.direct_running_mode != "multi_processing":
        return 1
    # Beam reads 0 as "one per core".
    return direct.direct_num_workers or os.cpu_count() or 1


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Any Beam flag passes through; with no --runner, the local runner on every core without Prism.

    Only the flags the user did not give are added.
    """
    args = list(beam_args)
    if not _given(args, "--runner"):
        cores = os.cpu_count() or 1
        args += ["--runner=FnApiRunner"]
        if cores > 1 and not _given(args, "--direct_running_mode"):
            args += ["--direct_running_mode=multi_processing"]
            if not _given(args, "--direct_num_workers"):
                args += [f"--direct_num_workers={cores}"]
    return PipelineOptions(args)


def tf_threads_per_worker(config: RunConfig, options: PipelineOptions) -> int | None:
    if config.tf_threads:
        return config.tf_threads
    workers = local_workers(options)
    if not workers:
        return None  # a cluster worker: TensorFlow sizes its pools to its machine
    if config.model_sharing == "machine":
        return os.cpu_count() or 1  # one model serves every local worker: give it every core
    return max(1, (os.cpu_count() or 1) // workers)


def check_job_endpoint(options: PipelineOptions, timeout_s: float = 10.0) -> None:
    """A portable submission to a job service that is not listening would hang for minutes: probe it."""
    endpoint = options.view_as(PortableOptions).job_endpoint
    runner = (options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1]
    if not endpoint or runner not in ("PortableRunner", "FlinkRunner", "SparkRunner") or endpoint == "embed":
        return
    import grpc

    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ConfigError(f"job_endpoint {endpoint!r} is not answering after {timeout_s:.0f} s; start the job "
                          f"service there or pass the address it listens on") from None
    finally:
        channel.close()


@dataclass
class Job:
    """A validated run, ready to be built into a pipeline."""
    config: RunConfig
    options: PipelineOptions
    handler: KerasBackboneHandler
    manifest: dict[str, Any]
    started_at: float
    progress_dir: str | None = None  # set by run() for local runners: the progress line's channel


def prepare(argv: Sequence[str] | None = None) -> Job:
    """Parse and validate everything; raises ConfigError before any work starts."""
    parser = argparse.ArgumentParser(prog="featurize run", description="Extract features from images.")
    add_run_arguments(parser)
    flags, beam_args = parser.parse_known_args(list(argv) if argv is not None else None)
    config = resolve(flags)
    check_paths(config)
    outputs = output_dims(config)
    options = pipeline_options(beam_args)
    check_job_endpoint(options)
    spec = model_spec(config, weights_digest(config))
    handler = KerasBackboneHandler(
        spec, batch_size=config.batch_size, min_batch_size=config.min_batch_size,
        intra_op_threads=tf_threads_per_worker(config, options), keras_backend=config.keras_backend,
        jit_compile=config.jit_compile, share_across_processes=config.model_sharing == "machine")
    started_at = time.time()
    manifest = {
        "format": config.format,
        "config": config.to_dict(),
        "fingerprint": fingerprint(config, outputs, spec),
        "runner": options.view_as(StandardOptions).runner,
        "started_at": datetime.fromtimestamp(started_at, timezone.utc).isoformat(timespec="seconds"),
    }
    return Job(config, options, handler, manifest, started_at)


def build(p: beam.Pipeline, job: Job) -> beam.PCollection:
    """Wire ReadImages -> ExtractFeatures -> WriteFeatures into `p`; returns the manifest PCollection."""
    config = job.config
    read = p | "ReadImages" >> ReadImages(config.input)
    extracted = read["images"] | "ExtractFeatures" >> ExtractFeatures(
        job.handler, decode_spec(config), config.dtype, job.progress_dir)
    errors = (read["errors"], extracted["errors"]) | "AllErrors" >> beam.Flatten()
    inputs = (
        (read["images"] | "CountImages" >> beam.combiners.Count.Globally(),
         read["errors"] | "CountReadErrors" >> beam.combiners.Count.Globally())
        | "Counts" >> beam.Flatten()
        | "Inputs" >> beam.CombineGlobally(sum))
    return {"rows": extracted["rows"], "errors": errors, "inputs": inputs} | "WriteFeatures" >> WriteFeatures(
        config.output, job.manifest, job.started_at)


def metrics_summary(result: beam.runners.runner.PipelineResult) -> dict[str, Any]:
    """Committed featurize counters and distributions, plus per-stage time and images/s."""
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception:  # noqa: BLE001 - a runner without metrics support still produced the output
        return {}
    counters: dict[str, int] = {}
    for counter in queried["counters"]:
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(counter.committed or 0)
    distributions = {}
    for dist in queried["distributions"]:
        value = dist.committed
        if value is not None and value.count:
            distributions[dist.key.metric.name] = {"count": value.count, "sum": value.sum, "min": value.min,
                                                   "max": value.max, "mean": round(value.mean, 3)}
    stages = {}
    for stage, ms_name, count_name in (("read", "read_ms", "inputs"), ("decode", "decode_ms", "decoded"),
                                       ("infer", "infer_ms", "rows")):
        seconds = counters.get(ms_name, 0) / 1000
        count = counters.get(count_name, 0)
        stages[stage] = {"seconds": round(seconds, 3), "images": count,
                         "images_per_s": round(count / seconds, 2) if seconds else None}
    return {"counters": counters, "distributions": distributions, "stages": stages}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`featurize run ...` as a function: returns the manifest of the finished output.

    Raises ConfigError (before any work starts) for a bad configuration. When the runner
    reports metrics, the manifest gains `metrics` (counters, distributions, per-stage time
    and images/s; stage seconds are summed over workers).
    """
    job = prepare(argv)
    if job.config.overwrite:
        clear_previous_output(job.config.output)
    stop_progress = None
    if job.config.progress and local_workers(job.options):
        job.progress_dir = tempfile.mkdtemp(prefix="featurize-progress-")
        stop_progress = progress.watch(job.progress_dir)
    try:
        p = beam.Pipeline(options=job.options)
        build(p, job)
        result = p.run()
        state = result.wait_until_finish()
    finally:
        if stop_progress:
            stop_progress()
        if job.progress_dir:
            shutil.rmtree(job.progress_dir, ignore_errors=True)
    manifest_path = FileSystems.join(job.config.output, MANIFEST)
    if state != PipelineState.DONE or not FileSystems.exists(manifest_path):
        raise RuntimeError(f"the pipeline ended in state {state} without completing {manifest_path}")
    with FileSystems.open(manifest_path) as handle:
        manifest = json.load(handle)
    summary = metrics_summary(result)
    if summary:
        manifest["metrics"] = summary
        write_json_atomically(manifest_path, manifest)
    return manifest
