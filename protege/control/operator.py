"""The operator's stop: a key on the terminal (``s``, space or Esc) or Ctrl-C, polled by the
control loop every cycle without blocking it."""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import tty

STOP_KEYS = ("s", " ", "\x1b")


class StopKey:
    """Polls a file descriptor (default stdin) for a stop key, and catches SIGINT (Ctrl-C), so
    that both bring the arm to a smooth stop instead of killing the process mid-motion.

    Args:
        fd: where keys come from (a terminal is put in cbreak mode until :meth:`close`); None:
            stdin, when it is open.
        catch_sigint: turn Ctrl-C into a stop request (main thread only).
        keys: read stop keys at all (False: Ctrl-C only, when a teleop device owns the keyboard).
    """

    def __init__(self, fd: int | None = None, catch_sigint: bool = True, keys: bool = True):
        self.fd = fd if fd is not None else (sys.stdin.fileno() if sys.stdin is not None and not sys.stdin.closed else None)
        if not keys:
            self.fd = None
        self._saved = None
        self._requested = False
        self._old_handler = None
        if self.fd is not None and os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        if catch_sigint:
            try:
                self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:  # not the main thread
                self._old_handler = None

    def _on_sigint(self, signum, frame) -> None:
        if self._requested:  # a second Ctrl-C: the operator insists
            raise KeyboardInterrupt
        self._requested = True

    def __call__(self) -> bool:
        """True once a stop key or Ctrl-C came (and from then on)."""
        if not self._requested and self.fd is not None:
            try:
                while select.select([self.fd], [], [], 0)[0]:
                    data = os.read(self.fd, 64)
                    if not data:  # end of input: no operator there any more, nothing to stop
                        self.fd = None
                        break
                    if any(k in data.decode(errors="ignore") for k in STOP_KEYS):
                        self._requested = True
                        break
            except OSError:
                self.fd = None
        return self._requested

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
            self._old_handler = None
