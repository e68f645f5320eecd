"""The Beam runner as featurize uses it: its options, the local workers and their TensorFlow threads,
the job service probe, and the metrics a finished pipeline reports."""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from pipeline.elements import METRICS_NAMESPACE
from pipeline.errors import ConfigError
from pipeline.job.config import DASK_RUNNER, RunConfig, names_dask_runner

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Any Beam flag passes through; with no --runner, the local runner on every core without Prism.

    Only the flags the user did not give are added.
    """
    args = list(beam_args)
    if names_dask_runner(args):
        # Beam finds the DaskRunner by its full path only: the short name is featurize's.
        args = [f"--runner={DASK_RUNNER}" if a.startswith("--runner=") else a for a in args]
        args = [DASK_RUNNER if i and args[i - 1] == "--runner" else a for i, a in enumerate(args)]
        if not (_given(args, "--dask_partition_size") or _given(args, "--dask_npartitions")):
            # Dask puts 128 elements in a partition, run by one worker: one unit each spreads them all.
            args += ["--dask_partition_size=1"]
    if not _given(args, "--runner"):
        cores = os.cpu_count() or 1
        args += ["--runner=FnApiRunner"]
        if cores > 1 and not _given(args, "--direct_running_mode"):
            args += ["--direct_running_mode=multi_processing"]
            if not _given(args, "--direct_num_workers"):
                args += [f"--direct_num_workers={cores}"]
    return PipelineOptions(args)


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


def runs_in_process(options: PipelineOptions) -> bool:
    """Whether a local runner runs the workers in this process (Ctrl-C reaches them directly)."""
    return options.view_as(DirectOptions).direct_running_mode != "multi_processing"


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


def metrics_summary(result: PipelineResult, runner: str | None = None) -> dict[str, Any]:
    """Committed featurize counters and distributions, plus per-stage time and images/s; for a runner
    that reports none, {"unavailable": why}, so the manifest never shows zeros it did not count."""
    name = (runner or type(result).__name__).rsplit(".", 1)[-1]
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except NotImplementedError:  # the DaskRunner's metrics() raises it
        return {"unavailable": f"{name} reports no metrics"}
    except Exception as exc:  # noqa: BLE001 - a runner without metrics support still produced the output
        return {"unavailable": f"{name} reports no metrics ({type(exc).__name__}: {exc})"}
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


def release(result: PipelineResult) -> None:
    """Close the dask Client a DaskRunner result holds: Beam leaves it connected, so a library caller
    would keep one connection per run, retrying once the scheduler is gone."""
    dask_runner = sys.modules.get("apache_beam.runners.dask.dask_runner")  # imported only for a Dask run
    if dask_runner is not None and isinstance(result, dask_runner.DaskRunnerResult):
        result.client.close()
