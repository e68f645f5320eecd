"""`manifest.json`: the document whose presence means a store is complete, built here and nowhere else.

It grows in three steps of one run:

    manifest_template   at launch: format, the resolved config, the fingerprint, the runner, the
                        start time, and the planner's counts (reused / skipped / removed inputs)
    finalize_store      once every unit of the run is committed (`WriteManifest` runs it on a
                        worker, the launcher when nothing was pending): counts from every journal
                        entry, checked against the feature files; files, most common errors,
                        units, wall time, images/s; features.h5 for HDF5; then written atomically
    with_metrics        after the pipeline, on the launcher: the runner's metrics, when it has any

Also here: the rule that stops a run with too many error rows (judged per worker as units
commit, and over the whole run before the manifest is written), and the list of skipped files
the manifest points to when it is too long to hold.
"""
from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from typing import Any, Iterable

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.elements import STAGES
from pipeline.files import READ_THREADS, join, read_json, in_parallel
from pipeline.inputs.listing import Listing
from pipeline.job import journal
from pipeline.job.config import RunConfig
from pipeline.job.entries import ErrorCounts
from pipeline.job.hdf5 import write_virtual_store
from pipeline.job.plan_files import UploadedPlan, planned_unit_ids
from pipeline.job.units import LISTED_LIMIT, Plan
from pipeline.logs import JobError
from pipeline.store.schema import MANIFEST, STATE_DIR, VIRTUAL_STORE, skipped_extensions

SKIPPED_FILE = f"{STATE_DIR}/skipped.txt"
ERROR_RATE_SAMPLE = 1000  # --max-error-rate judges once min(this, all inputs) are done
SUMMARY_ERROR_RATE = 0.10  # above this the run summary says so, even without --max-error-rate


def manifest_path(output: str) -> str:
    return join(output, MANIFEST)


def manifest_template(config: RunConfig, fingerprint: dict[str, Any], options: PipelineOptions, plan: Plan,
                      started_at: float) -> dict[str, Any]:
    """The manifest as far as the launcher knows it; `finalize_store` completes it."""
    listing = plan.listing
    return {
        "format": config.format,
        "config": config.to_dict(),
        "fingerprint": fingerprint,
        "runner": options.view_as(StandardOptions).runner,
        "started_at": datetime.fromtimestamp(started_at, timezone.utc).isoformat(timespec="seconds"),
        "counts": {"reused": plan.reused_inputs, "skipped": listing.skipped_count, "removed": plan.removed_count},
        "skipped": {"count": listing.skipped_count, "by_extension": listing.skipped_by_extension(),
                    "keys": [key for key, _ in itertools.islice(listing.skipped(), LISTED_LIMIT)],
                    "file": SKIPPED_FILE if listing.skipped_count > LISTED_LIMIT else None},
        "removed": {"count": plan.removed_count, "listed": plan.removed,
                    "kind": "files" if listing.layout == "files" else "shards"},
    }


def write_skipped(output: str, listing: Listing) -> None:
    """Every skipped file's key, when there are more than the manifest lists (its `skipped.file`)."""
    path = FileSystems.join(output, SKIPPED_FILE)
    if listing.skipped_count > LISTED_LIMIT:
        with FileSystems.create(path) as handle:
            for key, _ in listing.skipped():
                handle.write(f"{key}\n".encode("utf-8"))
    elif FileSystems.exists(path):  # an earlier run's list, which the manifest no longer names
        FileSystems.delete([path])


def withdraw(output: str) -> None:
    """A store being extended stops claiming completeness (its manifest and features.h5 go) until
    this run's `finalize_store` writes them again."""
    stale = [FileSystems.join(output, name) for name in (MANIFEST, VIRTUAL_STORE)
             if FileSystems.exists(FileSystems.join(output, name))]
    if stale:
        FileSystems.delete(stale)


def most_common_sentence(top: dict[str, Any]) -> str:
    """An `errors_top` item as the run's sentences say it."""
    return f"most common: {top['error']} ({top['count']:,}), e.g. {top['example']}"


def check_error_rate(inputs: int, errors: ErrorCounts, limit: float | None, expected: int | None = None) -> None:
    """Raise JobError when more than `limit` of at least min(1000, expected or all) inputs are error rows."""
    if limit is None or not inputs or inputs < min(ERROR_RATE_SAMPLE, expected or inputs):
        return
    if errors.total / inputs > limit:
        top = errors.most_common(top=1)
        common = f"; {most_common_sentence(top[0])}" if top else ""
        raise JobError(f"{errors.total / inputs:.1%} of {inputs:,} inputs are error rows, more than --max-error-rate "
                       f"{limit:g}{common}; the run stopped without a manifest: fix the inputs or raise the "
                       f"rate, then run again with --resume")


def _parquet_rows(path: str) -> int:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def finalize_store(output: str, template: dict[str, Any], started_at: float,
                   expected_units: Iterable[str] = (), threads: int = READ_THREADS) -> dict[str, Any]:
    """Count every committed unit, check nothing was lost, build features.h5 (HDF5), write the manifest.

    `template` is the manifest so far (format, config, fingerprint, runner, and the planner's
    `counts` of reused / skipped / removed inputs); `expected_units` are the units this run had
    to process, each of which must now be committed. Journal entries and Parquet footers are read
    `threads` at a time (one small read each: sequential reads cost an hour at 10^5 units on an
    object store).
    """
    # Summaries: a files unit's entry names every key it holds, 10^8 of them in a large store.
    entries = {entry.unit: entry.summary() for entry in journal.iter_committed_units(output, threads)}
    expected_units = set(expected_units)
    missing = sorted(expected_units - set(entries))
    if missing:
        raise RuntimeError(f"{len(missing)} work units were not committed (first: {missing[0]}); "
                           f"the output is incomplete and has no manifest: run again with --resume")
    entries = [entries[unit] for unit in sorted(entries)]
    for entry in entries:
        entry.check_counts()
    feature_files = [entry.files["features"] for entry in entries if "features" in entry.files]
    error_files = [entry.files["errors"] for entry in entries if "errors" in entry.files]
    errors = ErrorCounts.of(entries)
    counts = dict(template.get("counts", {}))
    counts.update(inputs=sum(e.inputs for e in entries), rows=sum(e.rows for e in entries), errors=errors.total,
                  errors_by_stage={stage: errors.by_stage.get(stage, 0) for stage in STAGES})
    if template["format"] == "hdf5":
        fingerprint = template["fingerprint"]
        rows = write_virtual_store(output, [join(output, path) for path in feature_files],
                                   fingerprint["outputs"], fingerprint["dtype"], fingerprint)
    else:
        rows = sum(in_parallel(_parquet_rows, [join(output, path) for path in feature_files], threads))
    if rows != counts["rows"]:  # the files must hold what the journal says, or nothing claims completeness
        raise RuntimeError(f"the feature files hold {rows} rows but the journal says {counts['rows']}; "
                           f"the output has no manifest")
    this_run = [entry for entry in entries if entry.unit in expected_units]
    check_error_rate(sum(e.inputs for e in this_run), ErrorCounts.of(this_run),
                     template.get("config", {}).get("max_error_rate"))
    journal.remove_orphans(output, entries)
    journal.failpoint("manifest")
    elapsed = time.time() - started_at
    processed = counts["inputs"] - counts.get("reused", 0)
    halved = [entry.batch_size for entry in this_run if entry.batch_size is not None]
    if halved:  # some worker ran out of accelerator memory
        template = dict(template, out_of_memory={"smallest_batch_size": min(halved), "units": len(halved)})
    document = dict(template, counts=counts, files={"features": feature_files, "errors": error_files},
                    errors_top=errors.most_common(),
                    units={"committed": len(entries), "processed": len(expected_units)},
                    wall_time_s=round(elapsed, 3),
                    images_per_s=round(processed / elapsed, 3) if elapsed > 0 else None,
                    finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    journal.write_json_atomically(manifest_path(output), document)
    return document


def run_summary(document: dict[str, Any]) -> tuple[str, list[str]]:
    """What a finished run says of its manifest: one line, and the notes for stderr (too many error rows,
    files skipped, inputs the listing lost)."""
    counts = document["counts"]
    reused = f", {counts['reused']} reused from earlier runs" if counts.get("reused") else ""
    line = (f"{counts['rows']} feature rows, {counts['errors']} error rows from {counts['inputs']} inputs{reused} "
            f"in {document['wall_time_s']:.1f} s -> {document['config']['output']}")
    warnings = []
    if counts["errors"] > SUMMARY_ERROR_RATE * counts["inputs"] and document["errors_top"]:
        warnings.append(f"warning: {counts['errors'] / counts['inputs']:.0%} of the inputs are error rows; "
                        f"{most_common_sentence(document['errors_top'][0])}; `featurize inspect` lists them "
                        f"(--max-error-rate stops a run early)")
    skipped, removed = document["skipped"], document["removed"]
    if skipped["count"]:
        warnings.append(f"skipped {skipped['count']} files that are not images ({skipped_extensions(skipped)}); "
                        f"`featurize inspect` lists them")
    if removed["count"]:
        warnings.append(f"warning: {removed['count']} {removed['kind']} in the store are no longer in --input "
                        f"(first: {removed['listed'][0]}); their rows stay in the store")
    return line, warnings


def with_metrics(output: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The finished manifest, with the runner's metrics added (and written) when there are any, or
    `{"unavailable": why}` from a runner that reports none (the DaskRunner): never zeros."""
    path = manifest_path(output)
    document = read_json(path)
    if metrics:
        document["metrics"] = metrics
        journal.write_json_atomically(path, document)
    return document


class _Finalize(beam.DoFn):
    """Runs once, after every unit of the run is committed (its side input is their journal entries)."""

    def __init__(self, output: str, template: dict[str, Any], started_at: float, plan: UploadedPlan):
        self._output, self._template, self._started_at = output, template, started_at
        self._plan = plan

    def process(self, _, committed):
        yield finalize_store(self._output, self._template, self._started_at, planned_unit_ids(self._plan))


class WriteManifest(beam.PTransform):
    """Input: the journal entries of the units this run committed. Output: the manifest document,
    written once every unit is committed; every unit of `plan` (read from the store) must be
    there (see `finalize_store`)."""

    def __init__(self, output: str, template: dict[str, Any], started_at: float, plan: UploadedPlan):
        super().__init__()
        self._output, self._template, self._started_at = output, template, started_at
        self._plan = plan

    def expand(self, entries):
        # Only the ids wait for the side input: a files unit's entry carries every key it holds.
        done = entries | "UnitIds" >> beam.Map(lambda entry: entry.unit)
        return (entries.pipeline
                | "Trigger" >> beam.Create([None])
                | "Finalize" >> beam.ParDo(_Finalize(self._output, self._template, self._started_at, self._plan),
                                           beam.pvalue.AsList(done)))
