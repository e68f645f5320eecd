"""How far a newcomer's reading of one run wanders: the launcher's path through featurize's own modules.

Runs `featurize run` through `cli.run_command` in this process (the local runner in memory, one worker
thread, on the sample images, random weights) under `sys.setprofile` (`--workers`: every thread, the
stages included; else the launcher's thread only), and records the modules of featurize's functions in
the order each is first called: the order a reader following the run meets them (a loop over images
reads its function once; what runs while a module is imported is not followed; a comprehension, lambda or
nested function is read with the function it is written in, as Python 3.12 inlines comprehensions). Prints
how many modules the walk enters and how many times it comes back to a module it had left (a "return"), per
module: the fewer, the more of one idea sits in one place.

    python bench/call_walk.py [--top 10]

Compare two versions by running it from each checkout (PYTHONPATH=that/checkout).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from machine import reported  # noqa: E402 - bench/ is not a package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def walk(argv: list[str], workers: bool = False) -> list[str]:
    import threading

    import pipeline
    from pipeline import cli

    package = os.path.dirname(pipeline.__file__) + os.sep
    modules: list[str] = []
    read: set = set()  # functions met already

    base = sys._getframe()

    def importing(frame) -> bool:
        """Whether `frame` runs as part of an import (a module's body, or a function it calls)."""
        while frame is not None and frame is not base:
            if frame.f_code.co_name == "<module>":
                return True
            frame = frame.f_back
        return False

    def profile(frame, event, arg):
        if event != "call" or frame.f_code in read or not frame.f_code.co_filename.startswith(package):
            return
        if importing(frame):  # an import is not a read: a registry filled or a dataclass made at import time
            return
        if "<" in frame.f_code.co_qualname:  # a comprehension, lambda or nested function: read with its function
            return
        read.add(frame.f_code)
        name = frame.f_code.co_filename[len(package):-3].replace(os.sep, ".")
        if not modules or modules[-1] != name:
            modules.append(name)

    sys.setprofile(profile)
    if workers:
        threading.setprofile(profile)
    try:
        if cli.run_command(argv) != 0:
            raise SystemExit("the run failed")
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return modules


def room(module: str) -> str:
    """`job.units` -> job; a top-level module (files, images, ...) is the shared room."""
    return module.split(".")[0] if "." in module else "top level"


def returns(places: list[str]) -> Counter:
    """How many times the walk enters each place again after having left it."""
    seen: set[str] = set()
    back: Counter = Counter()
    previous = None
    for name in places:
        if name == previous:
            continue
        if name in seen:
            back[name] += 1
        seen.add(name)
        previous = name
    return back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--workers", action="store_true", help="follow every thread, the stages included")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        modules = walk(["--input", os.path.join(ROOT, "samples", "shapes"), "--output", os.path.join(out, "store"),
                        "--model", "MobileNetV3Small", "--weights", "none", "--image-size", "32",
                        "--direct_running_mode=in_memory", "--direct_num_workers=1", "--no-progress"],
                       args.workers)
    back, rooms = returns(modules), returns([room(name) for name in modules])
    where = "every thread" if args.workers else "the launcher's thread"
    print(f"{where}: modules entered: {len(set(modules))}; returns to a module already left: {sum(back.values())}; "
          f"to a room already left: {sum(rooms.values())} ({', '.join(f'{r} {n}' for r, n in rooms.most_common())})")
    print("| module | returns |\n| --- | --- |")
    for name, count in back.most_common(args.top):
        print(f"| {name} | {count} |")


if __name__ == "__main__":
    with reported():
        main()
