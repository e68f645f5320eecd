"""`run(argv)`: parse and validate the configuration, wire the stages, run, return the manifest.

This module only wires the composite transforms; everything a library user would also
need lives in them and in the modules they use (`PendingUnits`, `ProcessUnits`, `WriteManifest`;
planning in `pipeline.job.units`, the journal in `pipeline.job.journal`).
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipeline.model import backbones, keras_models

from pipeline import files

from pipeline.job import progress
from pipeline.job.config import ConfigError, RunConfig, as_typed, input_size, parse_run_args
from pipeline.model.handler import KerasBackboneHandler
from pipeline.model.spec import ModelSpec
from pipeline.images import DecodeSpec
from pipeline.logs import RunLog, quiet, terminal_stderr_to_log
from pipeline.model.predictions import IMAGENET_CLASSES, ClassIndexError, load_class_names
from pipeline.model.failures import ModelLoadError
from pipeline.model.preflight import check_model
from pipeline.files import read_json
from pipeline.job.journal import (committed_unit_ids, committed_units, read_store_state, remove_orphans,
                              write_json_atomically, write_store_state)
from pipeline.store.schema import MANIFEST, STORE_STATE, VIRTUAL_STORE
from pipeline.elements import METRICS_NAMESPACE
from pipeline.job.writer import LISTED_LIMIT, OWNED_PATTERNS, SKIPPED_FILE, WriteManifest, finalize_store
from pipeline.inputs.record_shards import RECORD_LAYOUTS, check_record_fields
from pipeline.elements import RecordFields
from pipeline.inputs.listing import LAYOUT_NAMES, Listing, list_inputs, normalized_path, resolve_input
from pipeline.job.stopping import CtrlC, Interrupted
from pipeline.transforms import PendingUnits, ProcessUnits
from pipeline.job.units import Plan, plan_units
from pipeline.model.weights_cache import sha256_of

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_VERSIONED = ("featurize", "apache-beam", "keras", "tensorflow", "numpy", "pillow", "pyarrow", "h5py")


def model_spec(config: RunConfig, weights_sha256: str | None = None) -> ModelSpec:
    return ModelSpec(config.model, input_size(config), backbones.weights_argument(config.weights),
                     config.layers, config.pooling, config.gem_p, config.l2_normalize,
                     weights_sha256=weights_sha256, precision=config.precision,
                     weights_ordering=config.weights_ordering, predictions=config.predictions)


def decode_spec(config: RunConfig) -> DecodeSpec:
    height, width = input_size(config)
    return DecodeSpec(height, width, config.resize, config.interpolation, config.max_pixels,
                      config.jpeg_draft, config.exif_transpose)


def weights_digest(config: RunConfig) -> str | None:
    """sha256 of a weights file (None for imagenet / none); checks --weights-sha256 when given."""
    weights = backbones.weights_argument(config.weights)
    if weights in (None, "imagenet"):
        return None
    if config.weights_sha256 and not files.is_local(weights):
        return config.weights_sha256  # remote: the workers verify their copies, no need to read it here too
    digest = sha256_of(weights)
    if config.weights_sha256 and digest != config.weights_sha256:
        raise ConfigError(f"weights_sha256 {config.weights_sha256} does not match {config.weights!r}, "
                          f"whose sha256 is {digest}")
    return digest


def output_dims(config: RunConfig) -> dict[str, int]:
    """{output name: feature dimension}; building the model only when intermediate layers are asked for.
    With --predictions the one vector is the classifier's input (see Backbone.classifier_dim)."""
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


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint(config: RunConfig, outputs: dict[str, int], spec: ModelSpec) -> dict[str, Any]:
    """What decides the numbers, as the JSON stores hold (see pipeline.store.fingerprint.Fingerprint)."""
    from pipeline.store.fingerprint import Fingerprint

    return Fingerprint(
        backbone=config.model,
        weights=spec.weights or "none",
        weights_sha256=spec.weights_sha256,
        weights_ordering=spec.weights_ordering if spec.weights_sha256 else None,
        predictions=spec.predictions,
        input_size=tuple(spec.input_size),
        resize=config.resize,
        interpolation=config.interpolation,
        jpeg_draft=config.jpeg_draft,
        exif_transpose=config.exif_transpose,
        preprocess=backbones.BACKBONES[config.model].preprocess,
        layers=tuple(config.layers) if config.layers else None,
        pooling=tuple(config.pooling),
        gem_p=config.gem_p if "gem" in config.pooling else None,
        l2_normalize=config.l2_normalize,
        outputs=outputs,
        dtype=config.dtype,
        precision=config.precision,
        keras_backend=config.keras_backend,
        versions={name: _version(name) for name in _VERSIONED},
    ).to_json()


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
    shard = next((uri for _, uri, _ in listing.inputs if uri not in listing.missing), None)
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
    if len(listing.inputs) == len(listing.missing) and not listing.duplicates:
        skipped = f" ({len(listing.skipped)} other files skipped)" if listing.skipped else ""
        raise ConfigError(f"input {config.input!r} matches no {LAYOUT_NAMES[listing.layout]}{skipped}; give a folder "
                          f"of images, a glob, a path list (.txt/.csv/.tsv), or shards like "
                          f"'shards/train-{{000000..000127}}.tar' (.tar, .tfrecord, .parquet, .arrow)")
    if listing.layout in RECORD_LAYOUTS:
        _check_record_fields(config, listing)
    return listing


def _output_is_empty(output: str) -> bool:
    # A match, not exists(): on object stores a "folder" is a prefix, which exists() never sees.
    return not FileSystems.match([FileSystems.join(output, "**")], limits=[1])[0].metadata_list


# Fingerprint fields that do not change a single vector: versions are reported, not enforced.
_NOT_COMPARED = ("versions",)


def store_identity(config: RunConfig, fingerprint: dict[str, Any], listing: Listing) -> dict[str, Any]:
    """What a store is, written before its first unit and checked by every --resume."""
    return {"fingerprint": fingerprint, "format": config.format, "layout": listing.layout,
            "key_root": normalized_path(listing.root) if listing.root else "",
            "record_fields": [config.image_field, config.key_field], "featurize": _version("featurize")}


def check_same_store(output: str, state: dict[str, Any], wanted: dict[str, Any]) -> None:
    """--resume into a store made with another configuration is refused, naming the first difference."""
    theirs, ours = state["fingerprint"], wanted["fingerprint"]
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
        raise ConfigError(f"--resume: the store in {output!r} was made with {as_typed(name, before)} but this run "
                          f"has {as_typed(name, now)}; resume with the same configuration, or start over with "
                          f"--overwrite or a new --output")


def committed_for(config: RunConfig, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The journal entries a run may reuse: none unless --resume (or --dry-run) into a matching store.

    Refuses a non-empty output without --resume or --overwrite, and a --resume into a store
    made with another configuration or into a folder that is not a featurize store.
    """
    if config.overwrite or _output_is_empty(config.output):
        return {}
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
    return committed_units(config.output)


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
    manifest: dict[str, Any]  # the manifest so far; finalize_store completes it
    plan: Plan
    identity: dict[str, Any]
    journal: dict[str, dict[str, Any]]  # every committed entry of the store (retry ones too), read once
    started_at: float
    progress_dir: str | None = None  # set by run() for local runners: the progress line's channel
    class_names: list[str] | None = None  # --predictions: every class's name, handed to the workers


def check_model_before_workers(spec: ModelSpec, options: PipelineOptions) -> None:
    """Build the model once here, so a download that fails or weights that do not fit are one
    sentence before any worker starts: ImageNet on local runs (its download lands in the cache
    the local workers use), a weights file on this machine always."""
    local_file = spec.weights not in (None, "imagenet") and files.is_local(spec.weights)
    if not (local_file or (spec.weights == "imagenet" and local_workers(options))):
        return
    try:
        check_model(spec)
    except ModelLoadError as exc:
        raise ConfigError(exc.sentence) from None


def _manifest_template(config: RunConfig, fp: dict[str, Any], options: PipelineOptions, plan: Plan,
                       started_at: float) -> dict[str, Any]:
    skipped = [key for key, _ in plan.listing.skipped]
    return {
        "format": config.format,
        "config": config.to_dict(),
        "fingerprint": fp,
        "runner": options.view_as(StandardOptions).runner,
        "started_at": datetime.fromtimestamp(started_at, timezone.utc).isoformat(timespec="seconds"),
        "counts": {"reused": plan.reused_inputs, "skipped": len(skipped), "removed": len(plan.removed)},
        "skipped": {"count": len(skipped), "by_extension": plan.listing.skipped_by_extension(),
                    "keys": skipped[:LISTED_LIMIT],
                    "file": SKIPPED_FILE if len(skipped) > LISTED_LIMIT else None},
        "removed": {"count": len(plan.removed), "listed": plan.removed[:LISTED_LIMIT],
                    "kind": "files" if plan.listing.layout == "files" else "shards"},
    }


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """Local --output and --weights made absolute (the input is, when listed): the workers of a
    portable runner do not run in the launcher's folder, and a store outlives the folder it was
    made from."""
    changes = {"output": os.path.abspath(config.output)} if files.is_local(config.output) else {}
    weights = backbones.weights_argument(config.weights)
    if weights not in (None, "imagenet") and files.is_local(weights):
        changes["weights"] = os.path.abspath(weights)
    return replace(config, **changes)


def prepare(argv: Sequence[str] | None = None) -> Job:
    """Parse and validate everything, list the input and plan the units; raises ConfigError before any work."""
    config, beam_args = parse_run_args(list(argv) if argv is not None else sys.argv[1:])
    config = with_absolute_paths(config)
    listing = check_input(config)
    outputs = output_dims(config)
    options = pipeline_options(beam_args)
    check_job_endpoint(options)
    spec = model_spec(config, weights_digest(config))
    fp = fingerprint(config, outputs, spec)
    identity = store_identity(config, fp, listing)
    journal = committed_for(config, identity)
    plan = plan_units(listing, journal, config.unit_size, config.batch_size,
                      RecordFields(config.image_field, config.key_field))
    handler = KerasBackboneHandler(
        spec, batch_size=config.batch_size, min_batch_size=config.min_batch_size,
        intra_op_threads=tf_threads_per_worker(config, options), keras_backend=config.keras_backend,
        jit_compile=config.jit_compile, share_across_processes=config.model_sharing == "machine",
        verbose=config.verbose)
    class_names = None
    if config.predictions and not config.dry_run:
        try:
            class_names = load_class_names(config.class_index, IMAGENET_CLASSES)
        except ClassIndexError as exc:
            raise ConfigError(str(exc)) from None
    if not config.dry_run:
        check_model_before_workers(spec, options)
    started_at = time.time()
    return Job(config, options, handler, _manifest_template(config, fp, options, plan, started_at), plan,
               identity, journal, started_at, class_names=class_names)


def build(p: beam.Pipeline, job: Job) -> beam.PCollection:
    """Wire PendingUnits -> ProcessUnits -> WriteManifest into `p`; returns the manifest PCollection."""
    config, plan = job.config, job.plan
    units = p | "PendingUnits" >> PendingUnits(plan.pending, plan.committed, config.output)
    entries = units | "ProcessUnits" >> ProcessUnits(
        config.output, job.handler, decode_spec(config), config.format, job.manifest["fingerprint"],
        config.batch_size, job.progress_dir, config.max_error_rate, plan.pending_inputs, job.class_names)
    return entries | "WriteManifest" >> WriteManifest(
        config.output, job.manifest, job.started_at, [unit.unit_id for unit in plan.pending])
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


def dry_run_report(job: Job) -> dict[str, Any]:
    """What a run would do, from the listing and the journal alone: no model, nothing written."""
    plan, listing = job.plan, job.plan.listing
    return {
        "dry_run": True, "layout": listing.layout, "key_root": listing.root,
        "inputs": len(listing.inputs) + len(listing.duplicates), "bytes": listing.bytes,
        "units": [{"unit": u.unit_id, "source": u.source, "inputs": len(u.members) + len(u.rejected) or None,
                   "bytes": u.size_bytes} for u in plan.pending],
        "pending_inputs": plan.pending_inputs,
        "reused_units": len(plan.reused_units), "reused_inputs": plan.reused_inputs,
        "removed": job.manifest["removed"], "skipped": job.manifest["skipped"],
    }


def _write_skipped(output: str, listing: Listing) -> None:
    path = FileSystems.join(output, SKIPPED_FILE)
    if len(listing.skipped) > LISTED_LIMIT:
        with FileSystems.create(path) as handle:
            handle.write("".join(f"{key}\n" for key, _ in listing.skipped).encode("utf-8"))
    elif FileSystems.exists(path):  # an earlier run's list, which the manifest no longer names
        FileSystems.delete([path])


def _start_over_or_resume(job: Job) -> None:
    """Before any unit runs: --overwrite clears featurize's files; a store being resumed loses the
    files a crash left uncommitted, and its old manifest (it stops claiming completeness until
    this run has finished); a new store gets its identity."""
    output = job.config.output
    if job.config.overwrite:
        clear_previous_output(output)
    if read_store_state(output) is None:
        write_store_state(output, job.identity)
        return
    remove_orphans(output, job.journal.values())
    if job.plan.pending:
        stale = [FileSystems.join(output, name) for name in (MANIFEST, VIRTUAL_STORE)
                 if FileSystems.exists(FileSystems.join(output, name))]
        if stale:
            FileSystems.delete(stale)


class RunStopped(Interrupted):
    """Ctrl-C stopped the run: `committed` of the run's `units` are in the store in `output` (the
    rest is for --resume); `cancel` says what a cluster runner did with its job (None: local)."""

    def __init__(self, output: str, committed: int, units: int, cancel: str | None, log_path: str):
        super().__init__(cancel=cancel)
        self.args = (f"stopped by Ctrl-C with {committed} of {units} units committed in {output}",)
        self.output, self.committed, self.units, self.cancel, self.log_path = output, committed, units, cancel, log_path


def _stopped(job: Job, stop: Interrupted, log: RunLog) -> RunStopped:
    """After a Ctrl-C: once no worker writes any more, delete what a unit cut short left (no entry names
    it), and count the committed units of this run's plan."""
    output = job.config.output
    if stop.quiescent:
        remove_orphans(output, committed_units(output).values())
    planned = {unit.unit_id for unit in job.plan.pending} | set(job.plan.reused_units)
    committed = len(committed_unit_ids(output) & planned)
    log.note(f"stopped by Ctrl-C: {committed} of {len(planned)} units committed"
             + (f"; {stop.cancel}" if stop.cancel else ""))
    return RunStopped(output, committed, len(planned), stop.cancel, log.path)


def _run_pipeline(job: Job, log: RunLog) -> beam.runners.runner.PipelineResult:
    """Build, run and wait; raises unless the pipeline ended DONE and wrote its manifest, and
    RunStopped after a Ctrl-C (a second one: stopping.Interrupted, at once)."""
    stop_progress = None

    def start() -> beam.runners.runner.PipelineResult:
        p = beam.Pipeline(options=job.options)
        build(p, job)
        return p.run()

    with terminal_stderr_to_log(log.path, enabled=quiet()) as terminal:
        if job.config.progress and local_workers(job.options):
            job.progress_dir = tempfile.mkdtemp(prefix="featurize-progress-")
            stop_progress = progress.watch(job.progress_dir, job.plan.pending_inputs, len(job.plan.pending),
                                           stream=terminal)
        try:
            direct = job.options.view_as(DirectOptions)
            in_process = direct.direct_running_mode != "multi_processing"
            with CtrlC(local=bool(local_workers(job.options)), in_process=in_process, log_path=log.path) as ctrl_c:
                try:
                    result, state = ctrl_c.run(start)
                except Interrupted as stop:
                    if stop.at_once:
                        raise
                    # Still under CtrlC: a second Ctrl-C while this counts stops at once.
                    raise _stopped(job, stop, log) from None
        finally:
            if stop_progress:
                stop_progress()
            if job.progress_dir:
                shutil.rmtree(job.progress_dir, ignore_errors=True)
    manifest_path = FileSystems.join(job.config.output, MANIFEST)
    if state != PipelineState.DONE or not FileSystems.exists(manifest_path):
        raise RuntimeError(f"the pipeline ended in state {state} without completing {manifest_path}; "
                           f"run again with --resume to keep what was committed")
    return result


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`featurize run ...` as a function: returns the manifest of the finished output.

    Raises ConfigError (before any work starts) for a bad configuration, RunFailed (one
    sentence and the log file's path) when the run dies. With --dry-run,
    returns `dry_run_report` instead. When the runner reports metrics, the manifest gains
    `metrics` (counters, distributions, per-stage time and images/s; stage seconds are
    summed over workers).
    """
    job = prepare(argv)
    config = job.config
    if config.dry_run:
        return dry_run_report(job)
    _start_over_or_resume(job)
    _write_skipped(config.output, job.plan.listing)
    log = RunLog(config.output, config.verbose)
    try:
        if not job.plan.pending:  # everything is committed already: only the manifest is left to write
            return finalize_store(config.output, job.manifest, job.started_at)
        result = _run_pipeline(job, log)
    except Exception as exc:  # noqa: BLE001 - logged in full, raised again as one sentence (RunFailed)
        raise log.failed(exc) from exc
    finally:
        log.close()
    manifest_path = FileSystems.join(config.output, MANIFEST)
    manifest = read_json(manifest_path)
    summary = metrics_summary(result)
    if summary:
        manifest["metrics"] = summary
        write_json_atomically(manifest_path, manifest)
    return manifest
