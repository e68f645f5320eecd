"""The `featurize` command: `run`, `models`, `search`, `inspect`. Thin: the logic lives in the library."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from pipeline.config import ConfigError

USAGE = """usage: featurize COMMAND [options]

commands:
  run      extract features: featurize run --input photos/ --output out/ --model ResNet50 --pooling avg
  models   list every backbone (featurize models [NAME --layers] to list a backbone's layers)
  search   nearest neighbours of an image or a key: featurize search out/ --query cat.jpg --k 10 --grid nn.png
  inspect  what a store holds: counts, dimensions, fingerprint, errors, files

`featurize COMMAND --help` describes each command's options.
"""


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def models_command(argv: Sequence[str]) -> int:
    import argparse

    from pipeline import backbones
    from pipeline.config import parse_image_size

    parser = argparse.ArgumentParser(prog="featurize models", description="List backbones, or one backbone's layers.")
    parser.add_argument("name", nargs="?", help="a backbone name")
    parser.add_argument("--layers", action="store_true", help="list the backbone's layers with output shapes")
    parser.add_argument("--image-size", dest="image_size", help="input size for --layers (default: the backbone's)")
    args = parser.parse_args(argv)
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
            for name, shape in backbones.list_layers(backbone, size)]
    print(_table(rows, ["layer", "output_shape"]))
    return 0


def _extensions(skipped: dict) -> str:
    """`.txt 1001, .mov 1`: a manifest's skipped files by extension."""
    return ", ".join(f"{extension} {count}" for extension, count in skipped["by_extension"].items())


def _print_dry_run(report: dict) -> None:
    units, skipped = report["units"], report["skipped"]
    size = f"{report['bytes'] / 1e6:,.1f} MB"
    kind = "tar shards" if report["layout"] == "tar" else "image files"
    print(f"featurize: dry run, nothing written; {report['inputs']:,} {kind} ({size}), "
          f"key root {report['key_root']!r}")
    pending = "" if report["pending_inputs"] is None else f" ({report['pending_inputs']:,} inputs)"
    print(f"featurize: {len(units)} units to process{pending}; {report['reused_units']} units already committed "
          f"({report['reused_inputs']:,} inputs) that --resume would skip")
    if skipped["count"]:
        print(f"featurize: {skipped['count']:,} files would be skipped (not images): "
              + _extensions(skipped))
    if report["removed"]["count"]:
        print(f"featurize: {report['removed']['count']:,} {report['removed']['kind']} of the store are no longer "
              f"in the input")
    if units:
        rows = [{"unit": u["unit"], "inputs": u["inputs"] if u["inputs"] is not None else "?",
                 "bytes": u["bytes"], "source": u["source"]} for u in units[:50]]
        print(_table(rows, ["unit", "inputs", "bytes", "source"]))
        if len(units) > 50:
            print(f"... and {len(units) - 50} more units")


def run_command(argv: Sequence[str]) -> int:
    from pipeline.job import run
    from pipeline.logs import RunFailed
    from pipeline.sinks import SUMMARY_ERROR_RATE

    try:
        manifest = run(argv)
    except RunFailed as failure:
        print(f"featurize: error: {failure.sentence}", file=sys.stderr)
        print(f"featurize: the full log is in {failure.log_path}", file=sys.stderr)
        return 1
    if manifest.get("dry_run"):
        _print_dry_run(manifest)
        return 0
    counts = manifest["counts"]
    reused = f", {counts['reused']} reused from earlier runs" if counts.get("reused") else ""
    print(f"featurize: {counts['rows']} feature rows, {counts['errors']} error rows from {counts['inputs']} "
          f"inputs{reused} in {manifest['wall_time_s']:.1f} s -> {manifest['config']['output']}")
    if counts["errors"] > SUMMARY_ERROR_RATE * counts["inputs"] and manifest["errors_top"]:
        top = manifest["errors_top"][0]
        print(f"featurize: warning: {counts['errors'] / counts['inputs']:.0%} of the inputs are error rows; most "
              f"common: {top['error']} ({top['count']:,}), e.g. {top['example']}; `featurize inspect` lists them "
              f"(--max-error-rate stops a run early)", file=sys.stderr)
    if manifest["skipped"]["count"]:
        print(f"featurize: skipped {manifest['skipped']['count']} files that are not images "
              f"({_extensions(manifest['skipped'])}); "
              f"`featurize inspect` lists them", file=sys.stderr)
    removed = manifest["removed"]
    if removed["count"]:
        print(f"featurize: warning: {removed['count']} {removed['kind']} in the store are no longer in --input "
              f"(first: {removed['listed'][0]}); their rows stay in the store", file=sys.stderr)
    return 0


def _open_store(path: str):
    from pipeline.store import FeatureStore, IncompleteStore

    try:
        return FeatureStore.open(path)
    except IncompleteStore as exc:
        raise ConfigError(str(exc)) from None


def search_command(argv: Sequence[str]) -> int:
    import argparse
    import os

    from pipeline.contact_sheet import contact_sheet
    from pipeline.sources import read_uri

    parser = argparse.ArgumentParser(prog="featurize search", description="Exact nearest neighbours in a store.")
    parser.add_argument("store", help="a featurize output directory")
    parser.add_argument("--query", required=True, help="an image file (embedded with the store's model) or a key")
    parser.add_argument("--k", type=int, default=10, help="neighbours to return (default 10)")
    parser.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    parser.add_argument("--output-name", dest="output_name", help="which output, for stores with several")
    parser.add_argument("--grid", help="also draw the query and its neighbours into this PNG")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise ConfigError(f"k {args.k} must be at least 1")
    store = _open_store(args.store)
    if args.output_name is not None and args.output_name not in store.outputs:
        raise ConfigError(f"output-name {args.output_name!r} is not in the store; it has: {', '.join(store.outputs)}")
    if args.output_name is None and len(store.outputs) > 1:
        raise ConfigError(f"the store has {len(store.outputs)} outputs; pass --output-name, one of: "
                          f"{', '.join(store.outputs)}")
    name = store.output_name(args.output_name)
    if os.path.isfile(args.query):
        with open(args.query, "rb") as handle:
            query_bytes = handle.read()
        try:
            vector = store.embed([query_bytes], name)[0]
        except (OSError, ValueError) as exc:  # unreadable image, or weights that are not the store's
            raise ConfigError(f"query {args.query!r} cannot be embedded with the store's model "
                              f"({type(exc).__name__}: {exc})") from None
        query_label = os.path.basename(args.query)
    elif args.query in set(store.keys):
        vector, query_label = store.get(args.query, name), args.query
        query_bytes = None
    else:
        raise ConfigError(f"query {args.query!r} is neither an image file nor a key of the store")
    result = store.search(vector, k=args.k, metric=args.metric, output=name)
    uris = store.uris
    rows = [{"rank": rank, "score": f"{score:.6f}", "key": key, "uri": uris[index]}
            for rank, (index, score, key) in enumerate(
                zip(result.indices[0], result.scores[0], result.keys[0]), 1)]
    print(_table(rows, ["rank", "score", "key", "uri"]))
    if args.grid:
        def fetch(uri):
            try:
                return read_uri(uri)
            except Exception:  # noqa: BLE001 - a moved image becomes an 'unreadable' tile
                return None
        if query_bytes is None:
            query_bytes = fetch(uris[store.index_of(args.query)])
        png = contact_sheet((query_label, query_bytes),
                            [(row["key"], fetch(row["uri"]), float(row["score"])) for row in rows])
        with open(args.grid, "wb") as handle:
            handle.write(png)
        print(f"featurize: wrote {args.grid}")
    return 0


def inspect_command(argv: Sequence[str]) -> int:
    import argparse
    from collections import Counter

    from apache_beam.io.filesystems import FileSystems

    parser = argparse.ArgumentParser(prog="featurize inspect", description="Summarise a featurize output.")
    parser.add_argument("store", help="a featurize output directory")
    args = parser.parse_args(argv)
    store = _open_store(args.store)
    manifest, fp = store.manifest, store.fingerprint
    counts = manifest["counts"]
    print(f"store      {store.root}  ({store.format}, complete)")
    print(f"rows       {counts['rows']} of {counts['inputs']} inputs; {counts['errors']} errors; "
          f"{counts.get('reused', 0)} reused from earlier runs")
    print(f"model      {fp['backbone']}  weights={fp['weights']}  input={fp['input_size'][0]}x{fp['input_size'][1]}  "
          f"resize={fp['resize']}/{fp['interpolation']}  preprocess={fp['preprocess']}")
    print(f"run        {manifest.get('wall_time_s')} s, {manifest.get('images_per_s')} images/s, "
          f"runner {manifest.get('runner')}, finished {manifest.get('finished_at')}")
    print("\noutputs")
    print(_table([{"output": name, "dim": dim, "dtype": fp["dtype"]} for name, dim in store.outputs.items()],
                 ["output", "dim", "dtype"]))
    errors = store.errors()
    if errors.num_rows:
        by = Counter(zip(errors.column("stage").to_pylist(), errors.column("error_type").to_pylist()))
        print("\nerrors")
        print(_table([{"stage": s, "error_type": t, "count": n} for (s, t), n in sorted(by.items())],
                     ["stage", "error_type", "count"]))
    skipped, removed = manifest.get("skipped", {}), manifest.get("removed", {})
    if skipped.get("count"):
        print(f"\nskipped    {skipped['count']} files that are not images: "
              + _extensions(skipped))
        for key in skipped["keys"][:20]:
            print(f"           {key}")
        more = f" (all in {FileSystems.join(store.root, skipped['file'])})" if skipped.get("file") else ""
        if skipped["count"] > 20:
            print(f"           ... {skipped['count'] - 20} more{more}")
    if removed.get("count"):
        print(f"\nremoved    {removed['count']} {removed.get('kind', 'inputs')} are in the store but no longer in "
              f"the input: "
              + ", ".join(removed["listed"][:5]))
    files = [*manifest["files"]["features"], *manifest["files"]["errors"], "manifest.json"]
    if store.format == "hdf5":
        files.insert(len(manifest["files"]["features"]), "features.h5")
    sizes = FileSystems.match([FileSystems.join(store.root, f) for f in files])
    print("\nfiles")
    print(_table([{"file": f, "bytes": m.metadata_list[0].size_in_bytes if m.metadata_list else "missing"}
                  for f, m in zip(files, sizes)], ["file", "bytes"]))
    return 0


COMMANDS = {"run": run_command, "models": models_command, "search": search_command, "inspect": inspect_command}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Local workers relay Beam's own start-up chatter as warnings; failures still raise.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as exc:
        print(f"featurize: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
