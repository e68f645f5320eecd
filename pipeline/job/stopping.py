"""Ctrl-C on a run: stop within seconds, keep what is committed, say how to go on.

A terminal sends SIGINT to the whole foreground process group: the launcher and the local
worker processes Beam started. Left to themselves, workers die of a KeyboardInterrupt in
whichever thread it lands (Beam and gRPC tracebacks), or a worker's main thread dies while its
work threads go on; the launcher's wait on the pipeline may not notice for minutes. So the
launcher runs the pipeline in a thread of its own and its main thread waits, in short steps, for
the pipeline and for Ctrl-C. The first Ctrl-C ends the local worker processes, whatever they did
with the signal themselves (SIGTERM, then SIGKILL; their tracebacks go to the run's log, where
their stderr points), or asks a cluster runner to cancel the job, and raises `Interrupted`; a
second one kills the local workers at once. (Blocking SIGINT in the workers does not work: Beam
starts them through `/bin/sh -c`, which resets the signal mask.)

A worker killed mid-unit is safe by the commit protocol (pipeline.job.journal): a unit is in the
store only once its journal entry is written, atomically, so a unit cut short leaves files that
no entry names; `remove_orphans` deletes them once no worker is left (here, or at --resume).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import traceback
from typing import Any, Callable

from pipeline.processes import alive

WORKER_GRACE_S = 3.0  # SIGTERM to SIGKILL: a Python worker without a handler ends on SIGTERM at once
PIPELINE_GRACE_S = 2.0  # after the workers died: time for the runner's threads to notice and end
CANCEL_WAIT_S = 5.0  # a cluster runner's cancel() call, which may wait on the service


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the pipeline.

    `at_once`: a second Ctrl-C, nothing waited for. `quiescent`: every local worker process is
    gone and the pipeline thread has ended, so nothing writes to the output any more. `cancel`:
    what became of a cluster runner's cancel(), in words (None on a local runner).
    """

    def __init__(self, at_once: bool = False, quiescent: bool = False, cancel: str | None = None):
        super().__init__("stopped by Ctrl-C" + (" (at once)" if at_once else ""))
        self.at_once, self.quiescent, self.cancel = at_once, quiescent, cancel


def _children_from_proc() -> dict[int, list[int]] | None:
    if not os.path.isdir("/proc"):
        return None
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # a process that ended while listed
            continue
        children.setdefault(parent, []).append(int(entry))
    return children


def _children_from_ps() -> dict[int, list[int]]:
    listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                             check=True, timeout=10).stdout
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        pid, parent = map(int, line.split())
        children.setdefault(parent, []).append(pid)
    return children


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one): the local workers and their helpers."""
    children = _children_from_proc()
    if children is None:  # macOS and other systems without /proc
        children = _children_from_ps()
    found, todo = [], list(children.get(pid or os.getpid(), ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def end_processes(pids: list[int], grace_s: float = WORKER_GRACE_S) -> bool:
    """SIGTERM `pids`, SIGKILL what is left after `grace_s`; True once none is alive (within 2 s more)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while any(alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return True
    return not any(alive(pid) for pid in pids)


class CtrlC:
    """While active: a pipeline run in a thread of its own, and Ctrl-C handled by this (main) thread.

    Use as a context manager from the main thread; elsewhere (a library caller's thread, where
    no signal handler can be set) `run` simply runs the pipeline, as Beam would. `local`: a local
    runner, whose workers are this process's children or threads; `in_process`: its workers are
    threads of this process (in_memory, multi_threading), which no one can stop but the exit;
    `log_path`: the run's log, where threads that fail after a Ctrl-C write their tracebacks.
    """

    def __init__(self, local: bool, in_process: bool = False, log_path: str | None = None):
        self._local, self._in_process, self._log_path = local, in_process, log_path
        self._presses = 0
        self._previous: Any = None
        self._active = False

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._active = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            self._active = False

    def _thread_failure_to_log(self, args: threading.ExceptHookArgs) -> None:
        with open(self._log_path, "a") as log:  # type: ignore[arg-type]
            print(f"exception in thread {args.thread.name if args.thread else '?'} after Ctrl-C:", file=log)
            traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback, file=log)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._presses += 1
        if self._log_path:
            # Beam's worker threads raise as their workers die (`Worker subprocess exited with return code
            # -9`), possibly after the terminal is this process's stderr again: their tracebacks go to the
            # log. Left in place: the process ends after a Ctrl-C.
            threading.excepthook = self._thread_failure_to_log
        if self._presses == 1:
            return  # the waiting loop in `run` sees it and stops the run in order
        if self._local:
            for pid in descendants():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        raise Interrupted(at_once=True)

    def run(self, start: Callable[[], Any]) -> tuple[Any, Any]:
        """`start()` builds and runs the pipeline and returns its result; returns (result, final state).

        Raises what the pipeline raised, or `Interrupted` once a Ctrl-C has stopped it.
        """
        if not self._active:
            result = start()
            return result, result.wait_until_finish()
        outcome: dict[str, Any] = {}

        def pipeline() -> None:
            try:
                outcome["result"] = start()
                outcome["state"] = outcome["result"].wait_until_finish()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                outcome["error"] = exc

        # A daemon: after a Ctrl-C, a runner that waits forever on a dead worker must not hold the exit.
        thread = threading.Thread(target=pipeline, name="featurize-pipeline", daemon=True)
        thread.start()
        while thread.is_alive() and not self._presses:
            thread.join(0.2)  # short waits: the signal handler runs between them
        if self._presses:
            raise self._stop(thread, outcome)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"], outcome["state"]

    def _stop(self, thread: threading.Thread, outcome: dict[str, Any]) -> Interrupted:
        from pipeline.job.journal import failpoint

        failpoint("ctrl-c-stop")  # tests hold the orderly stop here to press Ctrl-C a second time
        if self._local:
            ended = end_processes(descendants())
            thread.join(PIPELINE_GRACE_S)
            # Worker processes write to the output, the launcher does not: once they are gone, nobody does.
            return Interrupted(quiescent=ended and (not self._in_process or not thread.is_alive()))
        result = outcome.get("result")
        if result is None:  # still submitting: there is no job to cancel yet
            return Interrupted(cancel="the job was still being submitted, so there was no job to cancel; "
                                      "if it started, cancel it with the runner's own tools")
        said: dict[str, str] = {}

        def cancel() -> None:
            try:
                result.cancel()
                said["cancel"] = "the runner was asked to cancel the job, whose workers may finish their current work"
            except Exception as exc:  # noqa: BLE001 - whatever the runner says is reported, word for word
                said["cancel"] = (f"the runner did not cancel the job ({type(exc).__name__}: {exc}); cancel it "
                                  f"with the runner's own tools")

        canceller = threading.Thread(target=cancel, name="featurize-cancel", daemon=True)
        canceller.start()
        canceller.join(CANCEL_WAIT_S)
        return Interrupted(cancel=said.get("cancel", f"the runner did not confirm the cancel within "
                                                     f"{CANCEL_WAIT_S:.0f} s; check the job with its own tools"))

