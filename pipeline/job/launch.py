"""`run(argv)`: prepare a run (parse, check, plan, build the fingerprint), build its graph, run it.

`prepare` -> `Job` (its plan written to a local folder); `upload_plan` copies the plan into the
store; `build` wires the stages (`PlannedUnits` -> `ProcessUnits` -> `WriteManifest`, see
pipeline.job.stages and pipeline.job.manifest) into a pipeline that reads it there; `run` starts
over or resumes the store, runs the pipeline and returns the manifest. The checks that stop a run
before any worker starts are in pipeline.job.checks, the run's fingerprint and the store's identity in
pipeline.job.identity, the runner's options and metrics in pipeline.job.runner, planning in
pipeline.job.units, the journal in pipeline.job.journal.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipeline import files, object_stores
from pipeline.elements import RecordFields
from pipeline.logs import RunLog, quiet, terminal_stderr_to_log
from pipeline.job import manifest, progress
from pipeline.job.checks import check_hub_preset, check_input, check_model_before_workers, committed_for
from pipeline.job.config import ConfigError, RunConfig
from pipeline.job.identity import output_dims, preset_folder, run_fingerprint, store_identity, weights_digest
from pipeline.job.journal import (clear_previous_output, committed_unit_ids, iter_committed_units, read_store_state,
                                  remove_orphans, write_store_state)
from pipeline.job.handout import Handout, size_bands
from pipeline.job.runner import (check_job_endpoint, is_small_run, local_parallelism, local_workers, metrics_summary,
                                 parse_run_args, pipeline_options, release, runs_in_process, tf_threads_per_worker)
from pipeline.job.plan_files import UploadedPlan, upload
from pipeline.job.stages import PlannedUnits, ProcessUnits, UnitSettings
from pipeline.job.stopping import CtrlC, Interrupted
from pipeline.job.units import Plan, plan_units
from pipeline.model import hub
from pipeline.model.hub import LocalPreset
from pipeline.model.handler import KerasBackboneHandler
from pipeline.model.predictions import IMAGENET_CLASSES, ClassIndexError, load_class_names
from pipeline.store.fingerprint import Fingerprint

@dataclass
class Job:
    """A validated run, ready to be built into a pipeline."""
    config: RunConfig
    options: PipelineOptions
    handler: KerasBackboneHandler
    fingerprint: Fingerprint  # the specs the workers compute with come from it
    manifest: dict[str, Any]  # the manifest so far; finalize_store completes it
    plan: Plan
    identity: dict[str, Any]
    started_at: float
    progress_dir: str | None = None  # set by run() for local runners: the progress line's channel
    class_names: list[str] | None = None  # --predictions: every class's name, handed to the workers
    uploaded: UploadedPlan | None = None  # set by upload_plan: the plan in the store, which the graph reads
    preset: LocalPreset | None = None  # a hub model's preset, copied into the store before the workers start
    handout: Handout | None = None  # set by run() for a local runner's several workers: they take units as they free up


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """Local --output, --weights and a hub preset folder made absolute (the input is, when listed): the
    workers of a portable runner do not run in the launcher's folder, and a store outlives the folder it
    was made from."""
    changes = {"output": os.path.abspath(config.output)} if files.is_local(config.output) else {}
    if hub.is_hub(config.model) and os.path.isdir(os.path.expanduser(hub.preset_of(config.model))):
        # a preset folder: the fingerprint names it the same from any working folder (--resume compares it)
        changes["model"] = hub.HUB_PREFIX + os.path.abspath(os.path.expanduser(hub.preset_of(config.model)))
    weights = config.weights_file
    if weights is not None and files.is_local(weights):
        changes["weights"] = os.path.abspath(weights)
    return replace(config, **changes)


def check_object_stores(config: RunConfig, options: PipelineOptions) -> None:
    """Beam's filesystems built from the run's options (the launcher lists and plans before any pipeline
    exists), and each S3 path probed: a wrong credential or a silent endpoint stops here within seconds."""
    object_stores.use_options(options)
    for role, path in (("input", config.input), ("output", config.output)):
        if object_stores.is_s3(path):
            object_stores.probe_s3(path, role, options)


def prepare(argv: Sequence[str] | None = None) -> Job:
    """Parse and validate everything, list the input and plan the units; raises ConfigError before any work."""
    config, beam_args = parse_run_args(list(argv) if argv is not None else sys.argv[1:])
    config = with_absolute_paths(config)
    preset = check_hub_preset(config) if hub.is_hub(config.model) else None  # before a listing that may be long
    options = pipeline_options(beam_args)
    check_job_endpoint(options)  # before a listing that may take minutes
    check_object_stores(config, options)  # the listing reads the input with these options
    listing = check_input(config)
    fingerprint = run_fingerprint(config, output_dims(config, preset), weights_digest(config), preset)
    spec, fp = fingerprint.model_spec(config.output), fingerprint.to_json()
    identity = store_identity(config, fp, listing)
    plan = plan_units(listing, committed_for(config, identity), config.unit_size, config.batch_size,
                      RecordFields(config.image_field, config.key_field))
    # A process runs one Keras backend, and the launcher's is TensorFlow's: another backend keeps its workers.
    if config.keras_backend == "tensorflow" and is_small_run(plan.pending_inputs,
                                                             sum(unit.size_bytes for unit in plan.pending)):
        options = pipeline_options(beam_args, small_run=True)
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
    return Job(config, options, handler, fingerprint, manifest.manifest_template(config, fp, options, plan, started_at),
               plan, identity, started_at, class_names=class_names, preset=preset)


def upload_plan(job: Job) -> UploadedPlan:
    """Copy the plan into the store, where the workers read it (before `build`)."""
    job.uploaded = upload(job.plan.writer, job.config.output)
    return job.uploaded


def build(p: beam.Pipeline, job: Job) -> beam.PCollection:
    """Wire PlannedUnits -> ProcessUnits -> WriteManifest into `p` (after `upload_plan`); returns the
    manifest PCollection."""
    config, plan = job.config, job.plan
    if job.uploaded is None:
        raise RuntimeError("build() reads the plan from the store: call upload_plan(job) first")
    units = p | "PlannedUnits" >> PlannedUnits(job.uploaded, config.output)
    decode = job.fingerprint.decode_spec(config.max_pixels)
    settings = UnitSettings(config.output, decode, config.format, job.manifest["fingerprint"], config.batch_size,
                            job.progress_dir, config.max_error_rate, plan.pending_inputs, job.class_names)
    entries = units | "ProcessUnits" >> ProcessUnits(job.handler, settings, job.handout)
    return entries | "WriteManifest" >> manifest.WriteManifest(
        config.output, job.manifest, job.started_at, job.uploaded)


def dry_run_report(job: Job) -> dict[str, Any]:
    """What a run would do, from the listing and the journal alone: no model, nothing written."""
    plan, listing = job.plan, job.plan.listing
    return {
        "dry_run": True, "layout": listing.layout, "key_root": listing.root,
        "inputs": listing.count + listing.duplicate_count, "bytes": listing.bytes,
        "units": [{"unit": u.unit_id, "source": u.source, "inputs": u.inputs or None, "bytes": u.size_bytes}
                  for u in plan.pending],
        "pending_inputs": plan.pending_inputs,
        "reused_units": len(plan.reused_units), "reused_inputs": plan.reused_inputs,
        "removed": job.manifest["removed"], "skipped": job.manifest["skipped"],
    }


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
    remove_orphans(output, job.plan.journal.values())
    if job.plan.pending:
        manifest.withdraw(output)


class RunStopped(Interrupted):
    """Ctrl-C stopped the run: `committed` of the run's `units` are in the store in `output` (the
    rest is for --resume); `cancel` says what a cluster runner did with its job (None: local)."""

    def __init__(self, output: str, committed: int, units: int, cancel: str | None, log_path: str):
        super().__init__(cancel=cancel)
        where = f" ({cancel})" if cancel else ""
        self.args = (f"stopped by Ctrl-C with {committed} of {units} units committed in {output}{where}",)
        self.output, self.committed, self.units, self.cancel, self.log_path = output, committed, units, cancel, log_path


def _stopped(job: Job, stop: Interrupted, log: RunLog) -> RunStopped:
    """After a Ctrl-C: once no worker writes any more, delete what a unit cut short left (no entry names
    it), and count the committed units of this run's plan."""
    output = job.config.output
    if stop.quiescent:
        remove_orphans(output, iter_committed_units(output))
    planned = {unit.unit_id for unit in job.plan.pending} | set(job.plan.reused_units)
    committed = len(committed_unit_ids(output) & planned)
    stopped = RunStopped(output, committed, len(planned), stop.cancel, log.path)
    log.note(str(stopped))
    return stopped


def _run_pipeline(job: Job, log: RunLog) -> PipelineResult:
    """Build, run and wait; raises unless the pipeline ended DONE and wrote its manifest, and
    RunStopped after a Ctrl-C (a second one: stopping.Interrupted, at once)."""
    stop_progress, started = None, []

    def start() -> PipelineResult:
        p = beam.Pipeline(options=job.options)
        build(p, job)
        started.append(p.run())
        return started[-1]

    with terminal_stderr_to_log(log.path, enabled=quiet()) as terminal:
        if job.config.progress and local_workers(job.options):
            job.progress_dir = tempfile.mkdtemp(prefix="featurize-progress-")
            stop_progress = progress.watch(job.progress_dir, job.plan.pending_inputs, len(job.plan.pending),
                                           stream=terminal)
        workers = local_parallelism(job.options)
        if workers > 1:
            job.handout = Handout(tempfile.mkdtemp(prefix="featurize-handout-"), workers,
                                  size_bands([unit.size_bytes for unit in job.plan.pending]))
        try:
            with CtrlC(local=bool(local_workers(job.options)), in_process=runs_in_process(job.options),
                       log_path=log.path) as ctrl_c:
                try:
                    result, state = ctrl_c.run(start)
                except Interrupted as stop:
                    if stop.at_once:
                        raise
                    # Still under CtrlC: a second Ctrl-C while this counts stops at once.
                    raise _stopped(job, stop, log) from None
        finally:
            for result in started:  # done or failed: a Dask run's client connection goes
                release(result)
            if stop_progress:
                stop_progress()
            for folder in (job.progress_dir, job.handout and job.handout.folder):
                if folder:
                    shutil.rmtree(folder, ignore_errors=True)
    manifest_path = manifest.manifest_path(job.config.output)
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
    summed over workers); when it reports none (the DaskRunner), `metrics` says so.
    """
    job = prepare(argv)
    config = job.config
    if config.dry_run:
        return dry_run_report(job)
    _start_over_or_resume(job)
    manifest.write_skipped(config.output, job.plan.listing)
    log = RunLog(config.output, config.verbose)
    try:
        if not job.plan.pending:  # everything is committed already: only the manifest is left to write
            return manifest.finalize_store(config.output, job.manifest, job.started_at)
        if job.preset is not None:  # the workers load these bytes, never the hub
            hub.publish_preset(job.preset.folder, job.preset.files, files.join(config.output, preset_folder(job.preset)))
        upload_plan(job)
        with object_stores.worker_environment(job.options):  # the local runner's workers start with no options
            result = _run_pipeline(job, log)
    except Exception as exc:  # noqa: BLE001 - logged in full, raised again as one sentence (RunFailed)
        raise log.failed(exc) from exc
    finally:
        log.close()
    return manifest.with_metrics(config.output, metrics_summary(result, job.manifest["runner"]))
