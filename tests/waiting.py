"""Waiting on things that happen in other threads and processes, for tests."""

import subprocess
import threading
import time


def wait_for(cond, timeout: float = 3.0) -> bool:
    """Poll ``cond()`` until true (returns True) or ``timeout`` s pass (returns False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


class Output:
    """A child process's output lines, read in a thread as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True).start()

    def wait_for(self, text: str, n: int = 1, timeout: float = 90.0) -> None:
        """Until ``text`` has appeared in ``n`` lines; fails when the process ends first or the time is up."""
        deadline = time.monotonic() + timeout
        while sum(text in ln for ln in self.lines) < n:
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.05)
