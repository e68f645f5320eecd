"""pipeline.processes.alive: running, exited-but-unreaped (a zombie) and reaped processes."""
import os
import subprocess
import sys
import time

from pipeline.processes import alive


def test_a_running_process_is_alive_and_a_zombie_or_reaped_one_is_not():
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while alive(child.pid):  # not reaped yet: it turns into a zombie, which counts as dead
        assert time.monotonic() < deadline, "an exited child still counts as alive"
        time.sleep(0.05)
    with open(f"/proc/{child.pid}/stat") as handle:
        assert handle.read().rsplit(")", 1)[1].split()[0] == "Z"  # still there, unreaped
    child.wait(timeout=30)
    assert not alive(child.pid)
