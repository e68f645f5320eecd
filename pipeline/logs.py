"""Quiet by default, one sentence when a run dies, and a log file with everything.

TensorFlow prints a dozen native (C++) start-up lines per process that no environment variable
silences in TF 2.21; Beam relays every worker's log and traceback to the launcher; libraries log
at import time (apache-beam[gcp] without apitools: `apitools not found, and bigquery client
libraries are not available`). Unless `--verbose`, featurize sends the native stderr of model
loading, Beam's log records and every other library's to the run's log file
(`OUT/_featurize/logs/run-TIME.log` for a local output, else the temp dir); only featurize's own
log lines reach the terminal, and a run that dies raises `RunFailed`: one sentence for the
terminal, and the log's path. `TF_CPP_MIN_LOG_LEVEL` is TensorFlow's own filter of its native
lines, wherever they go; it never decides what reaches the terminal.

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
from typing import Callable, Iterator, TextIO

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


def quiet() -> bool:
    """True unless --verbose (FEATURIZE_VERBOSE, which local workers inherit)."""
    return not os.environ.get(VERBOSE_ENV)


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


_OWN_LOGGERS = ("pipeline", "featurize")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _own(record: logging.LogRecord) -> bool:
    return record.name.partition(".")[0] in _OWN_LOGGERS


class _Terminal(logging.StreamHandler):
    """The terminal as it is when a record comes: sys.stderr may be replaced after this handler is made."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Pending(logging.Handler):
    """Other libraries' records logged before a run's log file exists (import-time warnings): kept
    in memory until RunLog writes them to its file, or `route_logs`' undo writes them to the
    fallback log. Paused while a RunLog's own handler takes every record."""

    LIMIT = 1000  # a library that logs in a loop must not fill the launcher's memory

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.paused = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.paused and not _own(record) and len(self.records) < self.LIMIT:
            self.records.append(record)

    def write_to(self, handler: logging.Handler) -> None:
        for record in self.records:
            handler.handle(record)
        self.records.clear()


_pending: _Pending | None = None


def route_logs(verbose: bool) -> Callable[[], None]:
    """How one featurize command logs: featurize's own warnings on the terminal, every other
    library's records to the log (a run's log file, else the fallback log of this process), or
    everything on the terminal with `verbose`. Returns the undo, which also writes the records
    still pending, if any, to the fallback log."""
    global _pending
    root = logging.getLogger()
    terminal = _Terminal()
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    added: list[logging.Handler] = [terminal]
    if not verbose:
        terminal.addFilter(_own)
        _pending = _Pending()
        added.append(_pending)
    saved_level = root.level
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for handler in added:
        root.addHandler(handler)

    def undo() -> None:
        global _pending
        for handler in added:
            root.removeHandler(handler)
        root.setLevel(saved_level)
        pending, _pending = _pending, None
        if pending is not None and pending.records:
            handler = logging.FileHandler(_fallback_log())
            handler.setFormatter(logging.Formatter(_FORMAT))
            pending.write_to(handler)
            handler.close()

    return undo


class RunLog:
    """The log file of one run; Beam's log records and every other library's go there (and, with
    --verbose, to the terminal too)."""

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
        self._handler.setFormatter(logging.Formatter(_FORMAT))
        self._beam = logging.getLogger("apache_beam")
        self._root = logging.getLogger()
        self._saved = (self._beam.propagate, self._beam.level, os.environ.get(LOG_ENV), os.environ.get(VERBOSE_ENV))
        # Quiet: Beam's records stop here, in the file. Verbose: they propagate to the root, whose
        # handlers are the terminal's and this file's (so the file gets each record once).
        if not verbose:
            self._beam.addHandler(self._handler)
        self._beam.setLevel(logging.INFO)
        self._beam.propagate = verbose
        self._root.addHandler(self._handler)  # the other libraries' records (absl, TensorFlow, gRPC)
        if _pending is not None:
            _pending.write_to(self._handler)
            _pending.paused = True
        _failures.addHandler(self._handler)
        os.environ[LOG_ENV] = self.path  # local workers inherit it
        if verbose:
            os.environ[VERBOSE_ENV] = "1"

    def failed(self, exc: BaseException) -> RunFailed:
        """Write `exc` with its traceback to the log; the RunFailed to raise instead."""
        _failures.error("the run failed", exc_info=exc)
        sentence = sentence_in(exc) or f"the run failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        return RunFailed(sentence, self.path)

    def note(self, message: str) -> None:
        """A line for the log file only."""
        _failures.warning(message)

    def close(self) -> None:
        self._beam.removeHandler(self._handler)
        self._root.removeHandler(self._handler)
        _failures.removeHandler(self._handler)
        self._handler.close()
        if _pending is not None:
            _pending.paused = False
        propagate, level, log_env, verbose_env = self._saved
        self._beam.propagate, self._beam.level = propagate, level
        for name, value in ((LOG_ENV, log_env), (VERBOSE_ENV, verbose_env)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
