"""Quiet by default, one sentence when a run dies, and a log file with everything.

TensorFlow prints a dozen native (C++) start-up lines per process that no environment variable
silences in TF 2.21; Beam relays every worker's log and traceback to the launcher. Unless
`--verbose` (or the user set TF_CPP_MIN_LOG_LEVEL themselves), featurize sends the native
stderr of model loading and Beam's log records to the run's log file
(`OUT/_featurize/logs/run-TIME.log` for a local output, else the temp dir), and a run that dies
raises `RunFailed`: one sentence for the terminal, and the log's path.

A reason a worker stops a run for (`JobError`, e.g. a model that cannot load, too many error
rows) reaches the launcher only as text inside Beam's error; its message starts with a
marker so `sentence_in` can find it there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from typing import Iterator, TextIO

LOG_ENV = "FEATURIZE_LOG"
VERBOSE_ENV = "FEATURIZE_VERBOSE"
_MARK = "featurize-error: "
_SENTENCE = re.compile(re.escape(_MARK) + r"(.+?)(?=\s*\[while running|\s*\n|\"|'|$)")
_failures = logging.getLogger("featurize.failures")  # the file only: a traceback never reaches the terminal
_failures.propagate = False


class JobError(RuntimeError):
    """A run stopped for a reason the user can act on; the message is one sentence."""

    def __init__(self, sentence: str):
        sentence = sentence[len(_MARK):] if sentence.startswith(_MARK) else sentence  # Beam re-raises with the text
        super().__init__(_MARK + sentence)
        self.sentence = sentence


class RunFailed(RuntimeError):
    """The run died: `sentence` for the terminal, the whole story in `log_path`."""

    def __init__(self, sentence: str, log_path: str):
        super().__init__(f"{sentence} (full log: {log_path})")
        self.sentence, self.log_path = sentence, log_path


def sentence_in(exc: BaseException) -> str | None:
    """The JobError sentence carried by `exc` or its causes, also when only its text survived."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, JobError):
            return exc.sentence
        match = _SENTENCE.search(str(exc))
        if match:
            return match.group(1).strip()
        exc = exc.__cause__ or exc.__context__
    return None


# Whether the user set TF_CPP_MIN_LOG_LEVEL, read when featurize loads: importing jax sets it (to 1),
# and TensorFlow imports jax when it is installed, so a later look would find it set by a library.
_USER_SET_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ


def quiet() -> bool:
    return not os.environ.get(VERBOSE_ENV) and not _USER_SET_TF_LOG_LEVEL


def _fallback_log() -> str:
    folder = os.path.join(tempfile.gettempdir(), "featurize-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"worker-{os.getpid()}.log")


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[int]:
    """File descriptor 2 appends to `path` (C++ lines and child processes included); yields the saved
    descriptor of the real stderr, restored on exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield saved
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def native_stderr_to_log(enabled: bool | None = None) -> Iterator[None]:
    """While TensorFlow loads: its C++ lines (they bypass Python) go to the log. `enabled`
    defaults to `quiet()`."""
    if not (quiet() if enabled is None else enabled):
        yield
        return
    with _stderr_to(os.environ.get(LOG_ENV) or _fallback_log()):
        yield


@contextlib.contextmanager
def terminal_stderr_to_log(path: str, enabled: bool) -> Iterator[TextIO]:
    """While a pipeline runs: this process's stderr and the local workers' it starts (their
    tracebacks and TensorFlow's lines included) go to the log. Yields a stream on the real
    terminal for featurize's own lines (the progress line)."""
    if not enabled:
        yield sys.stderr
        return
    with _stderr_to(path) as saved, os.fdopen(os.dup(saved), "w", buffering=1) as terminal:
        yield terminal


class RunLog:
    """The log file of one run; Beam's log records go there (and, with --verbose, to the terminal too)."""

    def __init__(self, output: str, verbose: bool):
        from pipeline import files

        if files.is_local(output):
            folder = os.path.join(output, "_featurize", "logs")
            os.makedirs(folder, exist_ok=True)
        else:  # an object store: a log is appended to as it goes, so keep it on this machine
            folder = os.path.dirname(_fallback_log())
        self.path = os.path.abspath(os.path.join(folder, time.strftime("run-%Y%m%d-%H%M%S.log", time.gmtime())))
        self._verbose = verbose
        self._handler = logging.FileHandler(self.path)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._beam = logging.getLogger("apache_beam")
        self._saved = (self._beam.propagate, self._beam.level, os.environ.get(LOG_ENV), os.environ.get(VERBOSE_ENV))
        self._beam.addHandler(self._handler)
        self._beam.setLevel(logging.INFO)
        self._beam.propagate = verbose
        _failures.addHandler(self._handler)
        os.environ[LOG_ENV] = self.path  # local workers inherit it
        if verbose:
            os.environ[VERBOSE_ENV] = "1"

    def failed(self, exc: BaseException) -> RunFailed:
        """Write `exc` with its traceback to the log; the RunFailed to raise instead."""
        _failures.error("the run failed", exc_info=exc)
        sentence = sentence_in(exc) or f"the run failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        return RunFailed(sentence, self.path)

    def close(self) -> None:
        self._beam.removeHandler(self._handler)
        _failures.removeHandler(self._handler)
        self._handler.close()
        propagate, level, log_env, verbose_env = self._saved
        self._beam.propagate, self._beam.level = propagate, level
        for name, value in ((LOG_ENV, log_env), (VERBOSE_ENV, verbose_env)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
