"""The Beam runner as featurize uses it: `featurize run`'s arguments split from Beam's (`parse_run_args`,
which refuses an argument neither knows), the runner's options, the local workers and their TensorFlow
threads, the job service probe, and the metrics a finished pipeline reports."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from typing import Any, NoReturn, Sequence

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult

from pipeline.elements import METRICS_NAMESPACE
from pipeline.errors import ConfigError
from pipeline.job.config import RunConfig, field_kind, flag_name, resolve

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


class _GivenOnce(argparse.Action):
    """A flag that takes one value. argparse keeps the last of two silently, so `--input a/ --input b/`
    would drop a/ without a word: two different values are refused instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        previous = getattr(namespace, self.dest, None)
        if previous is not None and previous != values:
            fix = ("featurize reads one input, so give one glob over several folders ('{a,b}/' or 'data/*/') "
                   "or a path list" if self.dest == "input" else "it takes one value")
            raise ConfigError(f"{option_string} is given twice ({previous!r} and {values!r}); {fix}")
        setattr(namespace, self.dest, values)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `featurize run` flags, one per RunConfig field, plus --config.

    Defaults are None so a preset's values survive unless a flag is given; values stay
    strings here so that flags and presets share one conversion (and its messages) in resolve().
    """
    parser.add_argument("--config", action=_GivenOnce, help="YAML preset; flags override its values")
    for f in dataclasses.fields(RunConfig):
        if field_kind(f.name)[0] is bool:
            parser.add_argument(flag_name(f), dest=f.name, action="store_false" if f.default else "store_true",
                                default=None, help=f.metadata["help"])
        else:
            parser.add_argument(flag_name(f), dest=f.name, action=_GivenOnce, help=f.metadata["help"])


class _OneSentenceParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def beam_parser() -> argparse.ArgumentParser:
    """A parser of every Apache Beam pipeline option, collected from Beam itself.

    That is every PipelineOptions subclass imported so far (Beam's own, and those of any
    runner or user module), so a new Beam release or a custom options class needs no list here.
    Like Beam (`allow_abbrev=False`), it accepts full option names only.
    """
    from apache_beam.options import pipeline_options

    # Beam's parser class: some options classes call its add_value_provider_argument.
    class Parser(pipeline_options._BeamArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise ConfigError(f"Apache Beam {message}")

    # conflict_handler="resolve": an option declared by two classes is known once, not an error.
    parser = Parser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    pending, seen = [pipeline_options.PipelineOptions], set()
    while pending:
        for cls in pending.pop().__subclasses__():
            if cls not in seen:
                seen.add(cls)
                pending.append(cls)
                try:
                    cls._add_argparse_args(parser)  # pylint: disable=protected-access
                except argparse.ArgumentError:  # a clash within one class must not hide the others' options
                    pass
    return parser


DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of `flag` in `args` (`--flag v` or `--flag=v`; the last one given), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def runner_name(runner: str | None) -> str:
    """`apache_beam.runners.dask.dask_runner.DaskRunner` or `DaskRunner` -> `DaskRunner`."""
    return (runner or "").rsplit(".", 1)[-1]


def names_dask_runner(args: Sequence[str]) -> bool:
    """Whether Beam's --runner is the DaskRunner, by its short name or its full path."""
    return runner_name(_flag_value(args, "--runner")).lower() in ("daskrunner", "dask")


def is_dask(args: Sequence[str]) -> bool:
    """Whether Beam's arguments need the DaskRunner's options (its name, or any --dask_ flag)."""
    return names_dask_runner(args) or any(arg.startswith("--dask_") for arg in args)


def import_dask_runner() -> None:
    """Declare the DaskRunner's --dask_* options: Beam adds them only once its module is imported."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401 - imported for its DaskOptions
        import dask.distributed  # noqa: F401 - Beam's module imports without it, then fails at run time
    except ImportError as exc:
        raise ConfigError(f"the DaskRunner needs dask.distributed ({exc}); install it with "
                          f"pip install 'featurize[dask]'") from None


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]  # pylint: disable=protected-access


def _close_flag(name: str, known: Sequence[str]) -> str:
    bare = {k.lstrip("-"): k for k in known}  # compare names, not the `--` every flag shares
    close = difflib.get_close_matches(name.lstrip("-"), list(bare), n=1)
    return f" (did you mean {bare[close[0]]!r}?)" if close else ""


def parse_run_args(argv: Sequence[str]) -> tuple[RunConfig, list[str]]:
    """`featurize run` arguments -> (the validated config, the arguments left for Apache Beam).

    An argument that is neither a featurize flag nor a Beam pipeline option (nor the value
    of one) is a ConfigError: Beam would drop a misspelt flag with a mere log warning.
    """
    parser = _OneSentenceParser(prog="featurize run", description="Extract features from images.",
                                allow_abbrev=False)  # exact names, as Beam: `--batch` is not `--batch-size`
    add_run_arguments(parser)
    flags, rest = parser.parse_known_args(list(argv))
    if is_dask(rest):
        import_dask_runner()
    beam = beam_parser()
    _, unknown = beam.parse_known_args(rest)  # consumes each Beam flag's value too, in either form
    if unknown:
        arg = unknown[0]
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            raise ConfigError(f"option {name!r} is neither a featurize option nor an Apache Beam pipeline option"
                              f"{_close_flag(name, _options(parser) + _options(beam))}; "
                              f"run `featurize run --help` for featurize's options")
        raise ConfigError(f"argument {arg!r} is neither an option nor the value of one; give each value after "
                          f"its flag (--input PATH); run `featurize run --help` for featurize's options")
    return resolve(flags), rest


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


# A run this small runs in the launcher's process: worker processes each take seconds to start (Python,
# TensorFlow, the model) and would spend longer starting than working (bench/startup.py).
SMALL_RUN_INPUTS = 200
SMALL_RUN_BYTES = 20 * 2**20  # shards, whose inputs are counted only when read: ~200 photos


def is_small_run(pending_inputs: int | None, pending_bytes: int) -> bool:
    """Whether a run's pending work is small enough for the launcher's process (files by count, shards by bytes)."""
    if pending_inputs is not None:
        return pending_inputs <= SMALL_RUN_INPUTS
    return pending_bytes <= SMALL_RUN_BYTES


def pipeline_options(beam_args: Sequence[str], small_run: bool = False) -> PipelineOptions:
    """Any Beam flag passes through; with no --runner, the local runner without Prism: on every core, or
    in this process for a `small_run`.

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
        if small_run and not (_given(args, "--direct_running_mode") or _given(args, "--direct_num_workers")):
            args += ["--direct_running_mode=in_memory"]
        elif cores > 1 and not _given(args, "--direct_running_mode"):
            args += ["--direct_running_mode=multi_processing"]
            if not _given(args, "--direct_num_workers"):
                args += [f"--direct_num_workers={cores}"]
    return PipelineOptions(args)


def local_parallelism(options: PipelineOptions) -> int:
    """How many workers (processes or threads) a local runner runs a stage on; 0 on a cluster runner."""
    if runner_name(options.view_as(StandardOptions).runner or "FnApiRunner") not in LOCAL_RUNNERS:
        return 0
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":
        return 1
    # Beam reads 0 as "one per core".
    return direct.direct_num_workers or os.cpu_count() or 1


def local_workers(options: PipelineOptions) -> int | None:
    """How many local worker processes share this machine's cores (1: the workers are this process's threads),
    or None on a cluster runner."""
    parallelism = local_parallelism(options)
    if not parallelism:
        return None
    return 1 if runs_in_process(options) else parallelism


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
    runner = runner_name(options.view_as(StandardOptions).runner)
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
    name = runner_name(runner or type(result).__name__)
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
