"""The `featurize` command: `run`, `models`. Thin: every piece of logic lives in the library."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from pipeline.config import ConfigError

USAGE = """usage: featurize COMMAND [options]

commands:
  run      extract features: featurize run --input photos/ --output out/ --model ResNet50 --pooling avg
  models   list every backbone (featurize models [NAME --layers] to list a backbone's layers)

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


def run_command(argv: Sequence[str]) -> int:
    from pipeline.job import run

    manifest = run(argv)
    counts = manifest["counts"]
    print(f"featurize: {counts['rows']} feature rows, {counts['errors']} error rows from {counts['inputs']} "
          f"inputs in {manifest['wall_time_s']:.1f} s -> {manifest['config']['output']}")
    return 0


COMMANDS = {"run": run_command, "models": models_command}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as exc:
        print(f"featurize: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
