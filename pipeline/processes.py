"""Whether a process is alive: the one answer the Ctrl-C handling (pipeline.job.stopping) and the GPU claims
(pipeline.model.devices) share."""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (exited, not yet reaped) is dead; another user's process is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc: a zombie counts as alive until its parent (Beam's thread, or init) reaps it
        return True
