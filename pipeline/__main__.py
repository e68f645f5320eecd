"""The `featurize` command: `python -m pipeline ...`, and the console script (`entry`)."""
import atexit
import contextlib
import os
import sys


def entry() -> None:
    """Run `pipeline.cli.main` and exit with its status, skipping native libraries' teardown.

    Once Python's own exit work is done (non-daemon threads joined, every other atexit function run:
    logging flushed, finalizers, child processes), what is left is C++ static destructors. Arrow's
    thread pools torn down there can abort a process whose work is done ("terminate called without an
    active exception", apache/arrow#34314): a finished run would exit -6 and a scheduler retry it.
    Exit functions registered before this one (by a sitecustomize or a .pth file, as coverage's
    subprocess hook does) are skipped with them.
    """
    status = [1]  # an exception that escapes main: Python prints its traceback; the status is 1

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):  # os._exit flushes nothing
            with contextlib.suppress(OSError, ValueError):  # a reader that left, a closed stream
                stream.flush()
        os._exit(status[0])

    # Registered before anything imports logging or multiprocessing: atexit runs last-registered
    # first, so this runs after all of theirs.
    atexit.register(leave)
    from pipeline.cli import main

    try:
        status[0] = main()
    except SystemExit as exc:  # argparse's --help and usage errors
        status[0] = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        raise
    except KeyboardInterrupt:  # a Ctrl-C before main's own handler (while importing)
        status[0] = 130
        raise
    sys.exit(status[0])


if __name__ == "__main__":
    entry()
