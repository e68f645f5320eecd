"""The `featurize` command: `run`, `models`, `search`, `index`, `serve`, `inspect`, `duplicates`. Thin: the logic lives in the library.

Longer than ~350 lines on purpose: seven commands' argparse and printing, and the one place that turns
every error into its sentence and exit code (Ctrl-C, a missing extra, a ConfigError), read together.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from typing import Iterator, Sequence

from pipeline import files, object_stores
from pipeline.errors import ConfigError

USAGE = """usage: featurize COMMAND [options]

commands:
  run      extract features: featurize run --input photos/ --output out/ --model ResNet50 --pooling avg
  models   list every backbone (featurize models [NAME --layers] to list a backbone's layers; --hub: keras-hub's)
  search   nearest neighbours of an image, a key or a sentence: featurize search out/ --query cat.jpg --k 10
           (--text "a red bicycle" on CLIP and SigLIP stores; --grid nn.png draws them)
  index    build a store's nearest-neighbour index and exact-scan matrix: featurize index out/
  serve    a search web page and JSON API over a store: featurize serve out/ --port 8000
  inspect  what a store holds: counts, dimensions, fingerprint, errors, files
  duplicates  near-duplicate groups as Parquet: featurize duplicates out/ --threshold 0.95

`featurize COMMAND --help` describes each command's options.
"""


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def models_command(argv: Sequence[str]) -> int:
    import argparse

    from pipeline.model import backbones, keras_models
    from pipeline.job.config import parse_image_size

    parser = argparse.ArgumentParser(prog="featurize models", description="List backbones, or one backbone's layers.")
    parser.add_argument("name", nargs="?", help="a backbone name")
    parser.add_argument("--layers", action="store_true", help="list the backbone's layers with output shapes")
    parser.add_argument("--image-size", dest="image_size", help="input size for --layers (default: the backbone's)")
    parser.add_argument("--hub", action="store_true", help="list keras-hub's model families and presets "
                        "(--model hub:PRESET; needs featurize[hub])")
    args = parser.parse_args(argv)
    if args.hub:
        from pipeline.logs import native_stderr_to_log
        from pipeline.model import hub
        from pipeline.model.runtime import tensorflow_without_jax

        families = hub.family_rows()
        print(_table(families, list(families[0])))
        print()
        with native_stderr_to_log(), tensorflow_without_jax():  # keras-hub's registry loads TensorFlow (seconds)
            presets = hub.preset_rows()
        print(_table(presets, list(presets[0])))
        print("\ninput ?: keras-hub's registry does not say; the preset's image converter decides it at run time. "
              "Also: hub:FOLDER (what save_to_preset writes), hub:kaggle://..., hub:hf://..., hub:gs://...")
        return 0
    if args.name is None:
        rows = backbones.model_summary_rows()
        print(_table(rows, list(rows[0])))
        return 0
    if args.name not in backbones.BACKBONES:
        raise ConfigError(f"model {args.name!r} is not a known backbone; run `featurize models` to list them")
    backbone = backbones.BACKBONES[args.name]
    if not args.layers:
        rows = [r for r in backbones.model_summary_rows() if r["name"] == args.name]
        print(_table(rows, list(rows[0])))
        return 0
    size = parse_image_size(args.image_size) or (backbone.default_size, backbone.default_size)
    rows = [{"layer": name, "output_shape": "x".join(str(d) for d in shape[1:])}
            for name, shape in keras_models.list_layers(backbone, size)]
    print(_table(rows, ["layer", "output_shape"]))
    return 0


def _print_dry_run(report: dict) -> None:
    from pipeline.inputs.layouts import LAYOUT_NAMES
    from pipeline.store.schema import skipped_extensions

    units, skipped = report["units"], report["skipped"]
    size = "size not looked up" if report["bytes"] is None else f"{report['bytes'] / 1e6:,.1f} MB"
    kind = LAYOUT_NAMES[report["layout"]]
    print(f"featurize: dry run, nothing written; {report['inputs']:,} {kind} ({size}), "
          f"key root {report['key_root']!r}")
    pending = "" if report["pending_inputs"] is None else f" ({report['pending_inputs']:,} inputs)"
    print(f"featurize: {len(units)} units to process{pending}; {report['reused_units']} units already committed "
          f"({report['reused_inputs']:,} inputs) that --resume would skip")
    if skipped["count"]:
        print(f"featurize: {skipped['count']:,} files would be skipped (not images): "
              + skipped_extensions(skipped))
    if report["removed"]["count"]:
        print(f"featurize: {report['removed']['count']:,} {report['removed']['kind']} of the store are no longer "
              f"in the input")
    if units:
        rows = [{"unit": u["unit"], "inputs": u["inputs"] if u["inputs"] is not None else "?",
                 "bytes": u["bytes"], "source": u["source"]} for u in units[:50]]
        print(_table(rows, ["unit", "inputs", "bytes", "source"]))
        if len(units) > 50:
            print(f"... and {len(units) - 50} more units")


@contextlib.contextmanager
def ctrl_c_after_imports() -> Iterator[None]:
    """A Ctrl-C while Beam's modules import is held until they are imported: raised inside an import, it
    leaves a module half-initialised, and Beam's next import fails with an AttributeError traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def run_command(argv: Sequence[str]) -> int:
    """`featurize run`: exit 0 with a summary, 1 with one sentence and the log's path when the run dies;
    Ctrl-C stops it (see pipeline.job.stopping and `main`)."""
    with ctrl_c_after_imports():
        from pipeline.job.launch import run
    from pipeline.logs import RunFailed
    from pipeline.job.manifest import run_summary

    try:
        manifest = run(argv)
    except RunFailed as failure:
        print(f"featurize: error: {failure.sentence}", file=sys.stderr)
        print(f"featurize: the full log is in {failure.log_path}", file=sys.stderr)
        return 1
    if manifest.get("dry_run"):
        _print_dry_run(manifest)
        return 0
    line, notes = run_summary(manifest)
    print(f"featurize: {line}")
    for note in notes:
        print(f"featurize: {note}", file=sys.stderr)
    if manifest["counts"]["rows"]:
        _print_next_steps(manifest["config"]["output"])
    return 0


def _print_next_steps(output: str) -> None:
    """What to try on a finished store, as commands to copy: the query is the store's first image."""
    import os
    import shlex

    store = _open_store(output)
    try:
        query, uri = store.reader.first()  # one row group, not every key of what may be a huge store
    finally:
        store.close()
    if os.path.isfile(uri):  # a local file: shown as the user would type it from here
        relative = os.path.relpath(uri)
        query = uri if relative.startswith(os.pardir) else relative
    out = shlex.quote(output)
    print("featurize: next:")
    for command in (f"inspect {out}", f"search {out} --query {shlex.quote(query)}", f"index {out}",
                    f"serve {out}"):
        print(f"  featurize {command}")


def _add_output_name(parser, also_output: bool = True) -> None:
    """--output-name (and --output, where no file is written): which of a store's outputs a command reads."""
    flags = ("--output-name", "--output") if also_output else ("--output-name",)
    parser.add_argument(*flags, dest="output_name", help="which output (LAYER/POOLING), for stores with several")


def _add_metric(parser, default: str | None = "cosine", help: str = "cosine (default) or l2") -> None:
    from pipeline.store.search import METRICS

    parser.add_argument("--metric", choices=METRICS, default=default, help=help)


def _open_store(path: str):
    from pipeline.store.feature_store import FeatureStore, IncompleteStore

    if object_stores.is_s3(path):  # the standard AWS variables; a wrong one is a sentence, not minutes of retries
        object_stores.probe_s3(path, "store")
    try:
        return FeatureStore.open(path)
    except IncompleteStore as exc:
        raise ConfigError(str(exc)) from None


def search_command(argv: Sequence[str]) -> int:
    import argparse

    from pipeline.store.index import StaleIndex

    parser = argparse.ArgumentParser(prog="featurize search", description="Nearest neighbours in a store: through "
                                     "its index when it has one (featurize index), else an exact scan.")
    parser.add_argument("store", help="a featurize output directory")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query", help="an image file (embedded with the store's model) or a key")
    queries.add_argument("--text", help="a sentence, embedded by the store's text tower (CLIP and SigLIP stores)")
    parser.add_argument("--k", type=int, default=10, help="neighbours to return (default 10)")
    _add_metric(parser)
    _add_output_name(parser)
    parser.add_argument("--grid", help="also draw the query and its neighbours into this PNG")
    parser.add_argument("--exact", action="store_true", help="scan every row exactly, even when the store has an index")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise ConfigError(f"k {args.k} must be at least 1")
    store = _open_store(args.store)
    if args.text is not None:
        refusal = store.text_search_refusal(args.output_name)  # before any model loads
        if refusal:
            raise ConfigError(refusal)
        name = store.text_output()  # the model's own embedding: the joint image-text space
        vector, query_label, query_bytes = store.embed_text([args.text])[0], args.text, None
    else:
        name = _store_output(store, args.output_name)
        vector, query_label, query_bytes = _image_or_key_query(store, args.query, name)
    try:
        result = store.search(vector, k=args.k, metric=args.metric, output=name, exact=args.exact)
    except StaleIndex as exc:
        raise ConfigError(str(exc)) from None
    rows = [{"rank": rank, "score": f"{score:.6f}", "key": key, "uri": store.uri_of(index)}
            for rank, (index, score, key) in enumerate(
                zip(result.indices[0], result.scores[0], result.keys[0]), 1)]
    columns = ["rank", "score", "key", "uri"]
    if store.fingerprint.predictions:  # a store made with --predictions: each neighbour's top class
        from pipeline.model.predictions import NAMES

        names = store.rows[NAMES]
        for row, index in zip(rows, result.indices[0]):
            row["top class"] = names[int(index)][0].as_py()
        columns.insert(3, "top class")
    print(_table(rows, columns))
    if result.tail_rows:
        print(f"featurize: {int(result.from_tail[0].sum())} of these {len(rows)} come from the {result.tail_rows:,} rows "
              f"the index does not cover yet, searched exactly; `featurize index {args.store}` adds them")
    if args.grid:
        from pipeline.contact_sheet import contact_sheet
        from pipeline.inputs.reading import URI_READ_ERRORS, read_uri

        def fetch(uri):
            try:
                return read_uri(uri)
            except URI_READ_ERRORS:  # a moved or unreadable image becomes an 'unreadable' tile
                return None
        if query_bytes is None and args.query is not None:
            query_bytes = fetch(store.uri_of(store.index_of(args.query)))
        png = contact_sheet((query_label, query_bytes),
                            [(row["key"], fetch(row["uri"]), float(row["score"])) for row in rows])
        with open(args.grid, "wb") as handle:
            handle.write(png)
        print(f"featurize: wrote {args.grid}")
    return 0


def _image_or_key_query(store, query: str, name: str):
    """(vector, label, the image's bytes or None) of `--query`: an image file embedded with the store's
    model, else a key of the store."""
    if os.path.isfile(query):
        with open(query, "rb") as handle:
            data = handle.read()
        try:
            vector = store.embed([data], name)[0]
        except (OSError, ValueError) as exc:  # unreadable image, or weights that are not the store's
            raise ConfigError(f"query {query!r} cannot be embedded with the store's model "
                              f"({type(exc).__name__}: {exc})") from None
        return vector, os.path.basename(query), data
    try:
        return store.get(query, name), query, None
    except KeyError:
        raise ConfigError(f"query {query!r} is neither an image file nor a key of the store") from None


def _store_output(store, output_name: str | None) -> str:
    """The output a command works on: the one named, or the store's only one."""
    if output_name is not None and output_name not in store.outputs:
        raise ConfigError(f"output {output_name!r} is not in the store; it has: {', '.join(store.outputs)}")
    if output_name is None and len(store.outputs) > 1:
        raise ConfigError(f"the store has {len(store.outputs)} outputs; pass --output, one of: "
                          f"{', '.join(store.outputs)}")
    return store.output_name(output_name)


def index_command(argv: Sequence[str]) -> int:
    import argparse

    from pipeline.store.index import index_path
    from pipeline.store.indexing import parse_bytes, update_index

    parser = argparse.ArgumentParser(prog="featurize index", description="Build a finished store's nearest-neighbour "
                                     "index and contiguous float32 matrix, inside the store's folder (index/); on an "
                                     "indexed store, add the units a --resume added since.")
    parser.add_argument("store", help="a finished featurize output directory, on a local disk")
    _add_output_name(parser)
    _add_metric(parser, default=None, help="what the index ranks by (default: the index's, "
                        "else cosine; another than the index's rebuilds it)")
    parser.add_argument("--memory-budget", dest="memory_budget",
                        help="most memory the index may take, like 800MB or 2GiB (default: no limit; the matrix "
                             "is memory-mapped and not counted)")
    parser.add_argument("--factory", help="a faiss index_factory string instead of the automatic choice, e.g. "
                        "IVF1024,PQ32 (Flat: no faiss index, exact scans)")
    parser.add_argument("--rebuild", action="store_true", help="retrain the index from scratch instead of adding "
                        "the new units' rows to it")
    args = parser.parse_args(argv)
    store = _open_store(args.store)
    name = _store_output(store, args.output_name)
    try:
        budget = parse_bytes(args.memory_budget) if args.memory_budget else None
        update = update_index(store, name, metric=args.metric, memory_budget=budget, factory=args.factory,
                              rebuild=args.rebuild)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    info, folder = update.info, index_path(store.root, update.info.output)
    if not update.built:
        added = (f"added {update.added_rows:,} rows of {update.added_units} new units to" if update.added_units
                 else "nothing to add to")
        kept = "quantizer and nprobe kept" if info.search_parameter else "exact scans"
        print(f"featurize: {added} the index of {info.output!r} (now {info.rows:,} rows, {info.factory}; {kept}; "
              f"--rebuild retrains) in {update.seconds:.1f} s -> {folder}")
        if update.advice:
            print(f"featurize: warning: {update.advice}", file=sys.stderr)
        return 0
    recall = "" if info.recall_at_10 is None else f", {info.search_parameter}={info.search_value} (recall@10 " \
                                                  f"{info.recall_at_10:.3f} on sampled rows)"
    rebuilt = f" (built anew: {update.reason})" if update.reason else ""
    print(f"featurize: indexed {info.rows:,} rows of {info.output!r} ({info.dim} dims, {info.metric}) as "
          f"{info.factory}{recall} in {info.build_seconds:.1f} s{rebuilt} -> {folder}")
    return 0


def _near(metric: str, threshold: float) -> str:
    """`cosine >= 0.95`, `l2 <= 0.3`: what made rows near-duplicates."""
    return f"{metric} {'>=' if metric == 'cosine' else '<='} {threshold}"


def duplicates_command(argv: Sequence[str]) -> int:
    import argparse

    from pipeline.store.duplicates import DUPLICATES_FILE, write_groups

    parser = argparse.ArgumentParser(prog="featurize duplicates", description="Near-duplicate groups of a store: the "
                                     "connected components of the pairs of rows at or past --threshold, as Parquet.")
    parser.add_argument("store", help="a finished featurize output directory")
    parser.add_argument("--threshold", type=float, required=True, help="cosine similarity at least this (or, with "
                        "--metric l2, distance at most this) makes two rows near-duplicates, e.g. 0.95")
    parser.add_argument("--output", help="the Parquet file to write (default: STORE/duplicates.parquet)")
    _add_metric(parser)
    _add_output_name(parser, also_output=False)  # --output is the Parquet file here
    parser.add_argument("--exact", action="store_true", help="compare every pair exactly even when the store has "
                        "an IVF index (time grows with the square of the rows)")
    args = parser.parse_args(argv)
    store = _open_store(args.store)
    name = _store_output(store, args.output_name)
    try:
        found = store.duplicates(args.threshold, metric=args.metric, output=name, exact=args.exact)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    path = args.output or files.join(store.root, DUPLICATES_FILE)
    write_groups(found, path)
    keys = found.table.num_rows
    how = "exactly" if found.method == "exact" else "through the index's range search"
    print(f"featurize: {found.groups:,} groups of {keys:,} keys ({keys - found.groups:,} beyond each group's first) "
          f"at {_near(found.metric, found.threshold)}, compared {how} over "
          f"{found.rows:,} rows -> {path}")
    return 0


def serve_command(argv: Sequence[str]) -> int:
    import argparse

    from pipeline.serve import serve

    parser = argparse.ArgumentParser(prog="featurize serve", description="A search page and JSON API over a store.")
    parser.add_argument("store", help="a finished featurize output directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    _add_output_name(parser)
    _add_metric(parser)
    args = parser.parse_args(argv)
    # The serve extra, imported before anything is printed: a missing one is one sentence (see main).
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"port {args.port} is not a port number; give 0 to 65535")
    store = _open_store(args.store)
    serve(store, _store_output(store, args.output_name), host=args.host, port=args.port, metric=args.metric)
    return 0


def inspect_command(argv: Sequence[str]) -> int:
    import argparse
    from collections import Counter

    from pipeline.store.schema import skipped_extensions

    parser = argparse.ArgumentParser(prog="featurize inspect", description="Summarise a featurize output.")
    parser.add_argument("store", help="a featurize output directory")
    args = parser.parse_args(argv)
    store = _open_store(args.store)
    manifest, fp = store.manifest, store.fingerprint
    counts = manifest["counts"]
    print(f"store      {store.root}  ({store.format}, complete)")
    print(f"rows       {counts['rows']} of {counts['inputs']} inputs; {counts['errors']} errors; "
          f"{counts.get('reused', 0)} reused from earlier runs")
    family = f"  family={fp.family} (text search: {'no' if store.text_search_refusal() else 'yes'})" if fp.family else ""
    print(f"model      {fp['backbone']}{family}  weights={fp['weights']}  input={fp['input_size'][0]}x{fp['input_size'][1]}  "
          f"resize={fp['resize']}/{fp['interpolation']}  preprocess={fp['preprocess']}")
    print(f"run        {manifest.get('wall_time_s')} s, {manifest.get('images_per_s')} images/s, "
          f"runner {manifest.get('runner')}, finished {manifest.get('finished_at')}")
    print("\noutputs")
    print(_table([{"output": name, "dim": dim, "dtype": fp["dtype"]} for name, dim in store.outputs.items()],
                 ["output", "dim", "dtype"]))
    if fp.predictions:
        from pipeline.model.predictions import NAMES

        top1 = Counter(names[0] for names in store.rows[NAMES].to_pylist())
        print(f"\npredictions  top-{fp.predictions} classes per row; the most frequent top-1 classes:")
        print(_table([{"class": name, "rows": count} for name, count in top1.most_common(10)], ["class", "rows"]))
    errors = store.errors()
    if errors.num_rows:
        by = Counter(zip(errors.column("stage").to_pylist(), errors.column("error_type").to_pylist()))
        print("\nerrors")
        print(_table([{"stage": s, "error_type": t, "count": n} for (s, t), n in sorted(by.items())],
                     ["stage", "error_type", "count"]))
    skipped, removed = manifest.get("skipped", {}), manifest.get("removed", {})
    if skipped.get("count"):
        print(f"\nskipped    {skipped['count']} files that are not images: "
              + skipped_extensions(skipped))
        for key in skipped["keys"][:20]:
            print(f"           {key}")
        more = f" (all in {files.join(store.root, skipped['file'])})" if skipped.get("file") else ""
        if skipped["count"] > 20:
            print(f"           ... {skipped['count'] - 20} more{more}")
    if removed.get("count"):
        print(f"\nremoved    {removed['count']} {removed.get('kind', 'inputs')} are in the store but no longer in "
              f"the input: "
              + ", ".join(removed["listed"][:5]))
    from pipeline.store.duplicates import DUPLICATES_FILE, read_summary

    duplicates = files.join(store.root, DUPLICATES_FILE)
    if files.exists(duplicates):
        made = read_summary(duplicates)
        grown = "" if made.rows == len(store) else (f"; the store has {len(store):,} rows now, run `featurize "
                                                    f"duplicates` again")
        print(f"\nduplicates {made.groups:,} groups of {made.keys:,} keys ({made.keys - made.groups:,} beyond each "
              f"group's first) at {_near(made.metric, made.threshold)}, "
              f"{made.method}, over {made.rows:,} rows (duplicates.parquet){grown}")
    print("\nfiles")
    print(_table([{"file": name, "bytes": "missing" if size is None else size}
                  for name, size in store.file_sizes().items()], ["file", "bytes"]))
    return 0


COMMANDS = {"run": run_command, "models": models_command, "search": search_command, "index": index_command,
            "serve": serve_command, "inspect": inspect_command, "duplicates": duplicates_command}

# setup.py's optional extras, by the module whose import asks for one.
EXTRAS = {"faiss": "index", "starlette": "serve", "uvicorn": "serve", "keras_hub": "hub"}


def missing_extra(exc: ImportError) -> str | None:
    """The module of an optional extra that `exc` failed to import: not installed (the error names it),
    or installed but broken (the error is raised inside the module's own code). None otherwise."""
    names = [exc.name or ""]
    frame = exc.__traceback__
    while frame is not None:
        names.append(frame.tb_frame.f_globals.get("__name__", ""))
        frame = frame.tb_next
    return next((name.partition(".")[0] for name in names if name.partition(".")[0] in EXTRAS), None)


def resume_command(run_argv: Sequence[str]) -> str:
    """The user's own `featurize run` command line with --resume (and without --overwrite, which would
    throw away what is committed), quoted for a POSIX shell."""
    program = ["featurize"]
    if os.path.basename(sys.argv[0]) == "__main__.py":  # started as `python -m pipeline`
        program = [os.path.basename(sys.executable), "-m", "pipeline"]
    args = [arg for arg in run_argv if arg != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join([*program, "run", *args])


def stopped_sentence(command: str, argv: Sequence[str], stop: KeyboardInterrupt) -> str:
    """The one line a Ctrl-C ends a command with: for a run, what is committed and how to go on."""
    if command != "run":
        return "featurize: stopped by Ctrl-C"
    from pipeline.job.launch import RunStopped
    from pipeline.job.stopping import Interrupted

    go_on = f"to go on, run: {resume_command(argv)}"
    if isinstance(stop, RunStopped):  # its sentence says what is committed, and what the cluster did
        return f"featurize: {stop}; {go_on}"
    at_once = " at once" if isinstance(stop, Interrupted) and stop.at_once else ""
    return f"featurize: stopped by Ctrl-C{at_once}; the units committed so far stay in the store; {go_on}"


def _reader_left() -> None:
    """`featurize inspect out/ | head`: the reader has what it wanted; no second error at exit's flush."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _usage(asked: bool) -> int:
    try:
        print(USAGE, file=sys.stdout if asked else sys.stderr)
    except BrokenPipeError:  # `featurize --help | head -1`
        _reader_left()
    return 0 if asked else 2


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import logs

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command not in COMMANDS:
        return _usage(asked=command in ("-h", "--help"))
    # Libraries' log records (import-time warnings included) go to the log unless --verbose.
    undo_logs = logs.route_logs(verbose=not logs.quiet() or (command == "run" and "--verbose" in argv[1:]))
    # Local workers relay Beam's own start-up chatter as warnings; failures still raise.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    try:
        return COMMANDS[command](argv[1:])
    except ConfigError as exc:
        print(f"featurize: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _reader_left()
        return 0
    except ImportError as exc:
        module = missing_extra(exc)
        if module is None:
            raise
        print(f"featurize: error: featurize {command} needs {module}: pip install 'featurize[{EXTRAS[module]}]' "
              f"({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C: a run stopped in order, a second Ctrl-C, or any other moment
        from pipeline.job.stopping import Interrupted

        in_main = threading.current_thread() is threading.main_thread()
        # A further Ctrl-C must not cut the last sentence short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        print(stopped_sentence(command, argv[1:], stop), file=sys.stderr, flush=True)
        others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
        if not isinstance(stop, Interrupted) and not others:  # no pipeline ran: a normal exit
            if in_main:
                signal.signal(signal.SIGINT, previous)
            return 130
        undo_logs()
        sys.stdout.flush()
        files.remove_scratch()  # the launcher's listing and plan: os._exit runs no finalizer
        # A stopped pipeline leaves Beam's threads behind (gRPC servers, a handler waiting on a killed worker),
        # some not daemons: a normal exit would wait for them.
        os._exit(130)
    finally:
        undo_logs()

