"""Velocity teleoperation: a 6-axis input (SpaceMouse, gamepad sticks) moves the TCP target.

A reader thread (one per device, :class:`DeviceReader`) keeps the device's newest axes, button
states and button presses; :class:`VelocityTeleop` is the :class:`~protege.teleop.session.TeleopDevice`
the recorder drives. Each control cycle it reads that state without waiting, maps the axes to a
twist (:class:`VelocityMapping`: deadband, per-axis sign and lock, scale) and integrates the twist
over one control period into the TCP target (position m + rotation, base frame), as Diffusion
Policy's real-world SpaceMouse teleop does. The target never leads the measured TCP by more than
``max_lead_m`` (a target held against the safety filter's box would otherwise run away from the
arm, and the operator would have to "unwind" it). The action goes out in the store's layout
(:mod:`protege.robot.actions`: position + 6-D rotation + gripper width m) and passes the control
loop's safety filter and watchdogs like any other.

A device that is unplugged, or whose driver goes away, raises :class:`TeleopDeviceLost` from
:meth:`VelocityTeleop.act`: the control loop then stops the arm smoothly and names the device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from ..control.inference import ActionSourceLost
from ..robot.actions import pose_to_action
from .session import DISCARD, KEEP, QUIT

AXES = ("x", "y", "z", "rx", "ry", "rz")


class TeleopDeviceLost(ActionSourceLost):
    """A teleop device was unplugged, went silent or its driver went away; the message names it."""


@dataclass
class VelocityMapping:
    """Device axes (6, each in [-1, 1], right-handed: x right, y forward, z up, rotations about
    them) to a TCP twist.

    Attributes:
        translation_scale: TCP speed at full deflection, m/s.
        rotation_scale: TCP angular speed at full deflection, rad/s.
        deadband: deflections below this fraction read 0; above it the axis is rescaled so that
            the output starts at 0 (no jump at the deadband's edge).
        signs: per-axis factor (x, y, z, rx, ry, rz), +1 or -1, for a device mounted another way.
        lock: axes that never move (names from ``x y z rx ry rz``), e.g. ``[rx, ry]`` keeps the
            gripper pointing down.
        frame: ``base`` (the robot base frame) or ``tool`` (the TCP frame: push forward moves
            along the tool's own y).

    Raises:
        ValueError: a negative scale, deadband outside [0, 1), a sign other than +-1, an unknown
            axis or frame.
    """

    translation_scale: float = 0.1
    rotation_scale: float = 0.5
    deadband: float = 0.05
    signs: Sequence[float] = (1, 1, 1, 1, 1, 1)
    lock: Sequence[str] = ()
    frame: str = "base"

    def __post_init__(self):
        if self.translation_scale < 0 or self.rotation_scale < 0:
            raise ValueError(f"scales must be >= 0, got {self.translation_scale}, {self.rotation_scale}")
        if not 0 <= self.deadband < 1:
            raise ValueError(f"deadband must be in [0, 1), got {self.deadband}")
        self.signs = np.asarray(list(self.signs), float)
        if self.signs.shape != (6,) or not np.all(np.abs(self.signs) == 1):
            raise ValueError(f"signs must be 6 values of +1 or -1 (x y z rx ry rz), got {list(self.signs)}")
        unknown = set(self.lock) - set(AXES)
        if unknown:
            raise ValueError(f"lock names unknown axes {sorted(unknown)}; axes are {list(AXES)}")
        if self.frame not in ("base", "tool"):
            raise ValueError(f"frame must be 'base' or 'tool', got {self.frame!r}")
        self._mask = np.array([a not in self.lock for a in AXES], float)

    def twist(self, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(6,) deflections in [-1, 1] -> (linear velocity (3,) m/s, angular velocity (3,) rad/s),
        in the mapping's frame."""
        a = np.clip(np.nan_to_num(np.asarray(axes, float)), -1.0, 1.0)
        mag = np.maximum(np.abs(a) - self.deadband, 0.0) / (1.0 - self.deadband)
        a = np.sign(a) * mag * self.signs * self._mask
        return a[:3] * self.translation_scale, a[3:] * self.rotation_scale


@dataclass
class DeviceState:
    """A reader's newest view of its device (read by the control loop, written by the reader thread).

    Attributes:
        axes: (6,) deflections in [-1, 1] (x y z rx ry rz).
        buttons: button index -> held.
        presses: button index -> presses since the last :meth:`DeviceReader.take_presses`.
        t_event: ``time.monotonic()`` of the newest event, s (None before the first).
        events: events read so far.
        lost: why the device is gone (None while it is there).
    """

    axes: np.ndarray = field(default_factory=lambda: np.zeros(6))
    buttons: dict[int, bool] = field(default_factory=dict)
    presses: dict[int, int] = field(default_factory=dict)
    t_event: float | None = None
    events: int = 0
    lost: str | None = None


class DeviceReader:
    """Base of the devices' reader threads: :meth:`run` reads events and calls :meth:`_motion`,
    :meth:`_button` and :meth:`_lost`; the control loop reads :meth:`snapshot` without waiting.

    Args:
        name: the device as the operator knows it, for messages (``spacemouse (spacenavd)``).
    """

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._state = DeviceState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the reader thread's side ---------------------------------------------------------------
    def _motion(self, axes: np.ndarray) -> None:
        with self._lock:
            self._state.axes = np.asarray(axes, float).copy()
            self._state.t_event, self._state.events = time.monotonic(), self._state.events + 1

    def _button(self, index: int, pressed: bool) -> None:
        with self._lock:
            if pressed and not self._state.buttons.get(index, False):
                self._state.presses[index] = self._state.presses.get(index, 0) + 1
            self._state.buttons[index] = bool(pressed)
            self._state.t_event, self._state.events = time.monotonic(), self._state.events + 1

    def _lost(self, why: str) -> None:
        with self._lock:
            if self._state.lost is None:
                self._state.lost = why
                self._state.axes = np.zeros(6)

    def run(self) -> None:  # pragma: no cover - each device's own
        raise NotImplementedError

    # -- the control loop's side ------------------------------------------------------------------
    def start(self) -> None:
        """Open the device (raising its error here, before anything moves) and start reading."""
        if self._thread is None:
            self.open()
            self._thread = threading.Thread(target=self._run_guarded, name=f"teleop-{self.name}", daemon=True)
            self._thread.start()

    def open(self) -> None:
        """Connect to the device; raises :class:`TeleopDeviceLost` (or the driver's error) when it is not there."""

    def _run_guarded(self) -> None:
        try:
            self.run()
        except Exception as e:  # noqa: BLE001 - the loop learns it through snapshot().lost
            self._lost(f"its reader failed: {e!r}")

    def snapshot(self) -> DeviceState:
        with self._lock:
            s = self._state
            return DeviceState(s.axes.copy(), dict(s.buttons), dict(s.presses), s.t_event, s.events, s.lost)

    def take_presses(self) -> dict[int, int]:
        """Presses per button since the last call (a press between two cycles is never missed)."""
        with self._lock:
            p, self._state.presses = self._state.presses, {}
            return p

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


class VelocityTeleop:
    """A :class:`~protege.teleop.session.TeleopDevice` that integrates a reader's twist into the
    TCP target (see the module docstring).

    Args:
        reader: the device's :class:`DeviceReader`.
        mapping: a :class:`VelocityMapping` (or its config as a dict).
        fps: the control rate, Hz: one :meth:`act` per period of 1 / fps s.
        gripper_button: the button that toggles the gripper (open / closed), or None.
        keep_button: the button that ends the episode and keeps it, or None.
        deadman_button: a button that must be held for the arm to move (a gamepad's), or None.
        open_width, closed_width: gripper widths, m.
        max_lead_m: the target stays within this distance of the measured TCP, m.
        keys: also read k (keep), x (discard), Q (quit) from this terminal (stdin).
        takeover_button: in ``protege-deploy``, the button that takes control from the policy and
            gives it back (:class:`~protege.control.operator.DeviceOperator`); unused when recording.

    Raises:
        ValueError: fps <= 0 or a bad mapping.
    """

    def __init__(self, reader: DeviceReader, mapping: VelocityMapping | dict | None = None, fps: float = 10.0,
                 gripper_button: int | None = 0, keep_button: int | None = 1, deadman_button: int | None = None,
                 open_width: float = 0.085, closed_width: float = 0.0, max_lead_m: float = 0.05, keys: bool = True,
                 takeover_button: int | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.reader = reader
        self.mapping = mapping if isinstance(mapping, VelocityMapping) else VelocityMapping(**(mapping or {}))
        self.dt = 1.0 / float(fps)
        self.gripper_button, self.keep_button, self.deadman_button = gripper_button, keep_button, deadman_button
        self.takeover_button = takeover_button
        self._presses: dict[int, int] = {}
        self.open_width, self.closed_width, self.max_lead_m = float(open_width), float(closed_width), float(max_lead_m)
        self.keys = None
        if keys:
            from .devices import TerminalKeys

            self.keys = TerminalKeys()
        self.name = reader.name
        self._pending: str | None = None
        self.position = np.zeros(3)
        self.rotation = Rotation.identity()
        self.width = self.open_width

    def reset(self, seed: int, obs, task_state=None) -> None:
        self.reader.start()
        self._check()
        self.reader.take_presses()  # presses between episodes do not count
        if self.keys is not None:
            self.keys.start()
            self.keys.read()
        pose = np.asarray(obs["tcp_pose"], float)
        self.position, self.rotation = pose[:3].copy(), Rotation.from_quat(pose[3:])
        if "gripper_width" in obs:
            w = float(np.asarray(obs["gripper_width"]).ravel()[0])
            self.width = self.closed_width if w < 0.5 * (self.open_width + self.closed_width) else self.open_width
        self._pending = None

    def _check(self) -> None:
        if (why := self.reader.snapshot().lost) is not None:
            raise TeleopDeviceLost(f"teleop device {self.name}: {why}")

    def act(self, obs) -> np.ndarray:
        """The TCP target for the end of this cycle ((10,) float64, base frame).

        Raises:
            TeleopDeviceLost: the device is gone (the loop stops the arm).
        """
        state = self.reader.snapshot()
        if state.lost is not None:
            raise TeleopDeviceLost(f"teleop device {self.name}: {state.lost}")
        self._collect()
        presses, self._presses = self._presses, {}
        if self.gripper_button is not None and presses.get(self.gripper_button, 0) % 2:
            self.width = self.closed_width if self.width == self.open_width else self.open_width
        if self.keep_button is not None and presses.get(self.keep_button) and self._pending is None:
            self._pending = KEEP
        if self.keys is not None and self._pending is None:
            self._pending = {"k": KEEP, "x": DISCARD, "Q": QUIT}.get(next(
                (c for c in self.keys.read() if c in "kxQ"), ""), None)
        armed = self.deadman_button is None or state.buttons.get(self.deadman_button, False)
        v, w = self.mapping.twist(state.axes) if armed else (np.zeros(3), np.zeros(3))
        if self.mapping.frame == "tool":
            v = self.rotation.apply(v)
            self.rotation = self.rotation * Rotation.from_rotvec(w * self.dt)
        else:
            self.rotation = Rotation.from_rotvec(w * self.dt) * self.rotation
        self.position = self.position + v * self.dt
        if "tcp_pose" in obs:  # never lead the arm by more than max_lead_m
            measured = np.asarray(obs["tcp_pose"], float)[:3]
            lead = self.position - measured
            if (d := np.linalg.norm(lead)) > self.max_lead_m:
                self.position = measured + lead * (self.max_lead_m / d)
        return pose_to_action(self.position, self.rotation.as_quat(), self.width)

    def _collect(self) -> None:
        for b, n in self.reader.take_presses().items():
            self._presses[b] = self._presses.get(b, 0) + n

    def toggle_pressed(self) -> bool:
        """Whether the take-over button was pressed (an odd number of times) since the last call.

        Raises:
            TeleopDeviceLost: the device is gone (checked every cycle, whoever drives).
        """
        self._check()
        self._collect()
        n = self._presses.pop(self.takeover_button, 0) if self.takeover_button is not None else 0
        return n % 2 == 1

    def start_at(self, position, quat, width: float) -> None:
        """Integrate from this target on (a take-over starts where the arm was commanded)."""
        self.position, self.rotation = np.asarray(position, float).copy(), Rotation.from_quat(quat)
        if np.isfinite(width):
            self.width = self.closed_width if width < 0.5 * (self.open_width + self.closed_width) else self.open_width

    def poll(self) -> str | None:
        decision, self._pending = self._pending, None
        return decision

    def status(self) -> str:
        """The device's part of the operator's status line."""
        s = self.reader.snapshot()
        armed = self.deadman_button is None or s.buttons.get(self.deadman_button, False)
        return ("LOST: " + s.lost) if s.lost else ("moving" if armed else "hold the dead-man button to move")

    def close(self) -> None:
        self.reader.close()
        if self.keys is not None:
            self.keys.close()
