"""The operator: their stop (a key on the terminal, ``s``, space or Esc, or Ctrl-C, polled by the
control loop every cycle without blocking it), and their take-over from a deployed policy
(:class:`DeviceOperator`; HG-DAgger: Kelly et al., "HG-DAgger: Interactive Imitation Learning with
Human Experts", ICRA 2019).

``protege-deploy ... teleop=spacemouse`` (or gamepad, keyboard) wraps the device in a
:class:`DeviceOperator`: its take-over button (the SpaceMouse's and the gamepad's
``takeover_button``, the keyboard's t) hands control to the person and back. At a take-over the
device starts from the target the loop commanded last, so the TCP does not jump; while the person
drives, the policy keeps predicting from the newest observation, so a fresh chunk is waiting when
control comes back (the safety filter limits the step between the last human target and the
policy's). The device is checked every cycle: unplugged, the arm stops, whoever drives. Devices are
duck-typed (``reset``, ``act``, ``toggle_pressed``, ``start_at``): control knows no teleop module.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import tty

import numpy as np

from .loop import Operator

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


class DeviceOperator(Operator):
    """A teleop device (:class:`~protege.teleop.velocity.VelocityTeleop` or
    :class:`~protege.teleop.devices.KeyboardDevice`) as the loop's :class:`~protege.control.loop.Operator`.

    Raises:
        ValueError: a device that gives joint targets (GELLO): a policy of TCP actions cannot hand over to it.
    """

    def __init__(self, device):
        if getattr(device, "command", "tcp") != "tcp":
            raise ValueError(f"teleop={getattr(device, 'name', device)} gives joint targets; taking over from a policy "
                             "of TCP actions needs a TCP device (spacemouse, gamepad, keyboard)")
        self.device = device
        self.name = getattr(device, "name", type(device).__name__)
        self.in_control = False

    def begin(self, seed, obs) -> None:
        self.device.reset(seed if seed is not None else 0, obs, None)
        self.in_control = False

    def wants_control(self, obs) -> bool:
        if self.device.toggle_pressed():
            self.in_control = not self.in_control
        return self.in_control

    def take_over(self, position, quat, width, obs) -> None:
        self.device.start_at(position, quat, width)

    def act(self, obs) -> np.ndarray:
        return np.asarray(self.device.act(obs), dtype=np.float64)

    def close(self) -> None:
        getattr(self.device, "close", lambda: None)()
