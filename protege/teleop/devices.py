"""Teleop devices: the terminal keyboard (the SpaceMouse and the gamepad are in
:mod:`protege.teleop.spacemouse` and :mod:`protege.teleop.gamepad`; the scripted expert lives with
its simulator, in :mod:`protege.sim.expert`).

Devices implement :class:`~protege.teleop.session.TeleopDevice` and produce TCP-pose actions
(:mod:`protege.robot.actions`: position m + 6-D rotation + gripper width m, base frame).
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty

import numpy as np
from scipy.spatial.transform import Rotation

from ..robot.actions import pose_to_action
from .session import DISCARD, KEEP, QUIT


KEYMAP_HELP = """keyboard teleop (terminal):
  w/s  +y/-y    a/d  -x/+x    r/f  up/down    q/e  yaw left/right    space  open/close gripper
  k    keep the episode    x  discard it    Q  quit (the open episode is discarded)"""


class TerminalKeys:
    """Keys typed on a terminal, read without blocking (cbreak mode while open).

    Args:
        stream: a file descriptor (default: stdin).
    """

    def __init__(self, stream: int | None = None):
        self.fd = sys.stdin.fileno() if stream is None else stream
        self._saved = None

    def start(self) -> bool:
        """Put a terminal in cbreak mode (once); returns whether it did so just now."""
        if self._saved is None and os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
            return True
        return False

    def read(self) -> str:
        """Every key typed since the last call ("" when none)."""
        out = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 64)
            if not data:
                break
            out.append(data.decode(errors="ignore"))
        return "".join(out)

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class KeyboardDevice:
    """Drive the TCP from a terminal: each key press moves the target by ``step_m`` (or turns it by
    ``step_deg``); keys are read without blocking, so the arm holds its target between presses.

    Args:
        step_m: translation per key press, m.
        step_deg: yaw per key press, degrees.
        stream: a file descriptor to read keys from (default: stdin, put in cbreak mode while recording).
    """

    reads_terminal = True  # owns stdin: protege-deploy's stop keys leave it alone (Ctrl-C still stops)
    moves = {"w": (0, 1, 0), "s": (0, -1, 0), "a": (-1, 0, 0), "d": (1, 0, 0), "r": (0, 0, 1), "f": (0, 0, -1)}
    decisions = {"k": KEEP, "x": DISCARD, "Q": QUIT}

    def __init__(self, step_m: float = 0.01, step_deg: float = 5.0, stream: int | None = None):
        self.step_m, self.step_deg = step_m, step_deg
        self.keys = TerminalKeys(stream)
        self.name = "keyboard"
        self._pending: str | None = None
        self._buffer = ""  # keys read and not yet acted on

    def reset(self, seed: int, obs, task_state=None) -> None:
        if self.keys.start():
            print(KEYMAP_HELP, file=sys.stderr)
        self.keys.read()  # keys pressed between episodes must not move the arm at its start
        pose = np.asarray(obs["tcp_pose"], float)
        self.position, self.rotation, self.width = pose[:3].copy(), Rotation.from_quat(pose[3:]), 0.085
        self._pending = None

    def _collect(self) -> None:
        self._buffer += self.keys.read()

    def toggle_pressed(self) -> bool:
        """Whether t (take over / give back, in protege-deploy) was typed since the last call."""
        self._collect()
        n = self._buffer.count("t")
        self._buffer = self._buffer.replace("t", "")
        return n % 2 == 1

    def start_at(self, position, quat, width: float) -> None:
        """Move from this target on (a take-over starts where the arm was commanded)."""
        self.position, self.rotation = np.asarray(position, float).copy(), Rotation.from_quat(quat)
        if np.isfinite(width):
            self.width = 0.0 if width < 0.04 else 0.085

    def act(self, obs) -> np.ndarray:
        self._collect()
        typed, self._buffer = self._buffer, ""
        for key in typed:
            if key in self.moves:
                self.position = self.position + self.step_m * np.array(self.moves[key], float)
            elif key in "qe":
                sign = 1.0 if key == "q" else -1.0
                self.rotation = Rotation.from_euler("z", sign * self.step_deg, degrees=True) * self.rotation
            elif key == " ":
                self.width = 0.0 if self.width > 0.04 else 0.085
            elif key in self.decisions:
                self._pending = self.decisions[key]
        return pose_to_action(self.position, self.rotation.as_quat(), self.width)

    def poll(self) -> str | None:
        decision, self._pending = self._pending, None
        return decision

    def close(self) -> None:
        self.keys.close()
