"""The Robot, Gripper and Camera interfaces that real drivers and the simulator both implement.

Code above ``robot/`` and ``sim/`` talks to these classes only, so it cannot tell a UR5e from its
MuJoCo twin.

Conventions (SI units throughout):

* **Frames.** Poses are in the robot base frame (the UR controller's *Base*: z up, origin at the
  base flange's centre). The TCP pose is the tool centre point's position (3,) m and rotation as
  a unit quaternion (4,) in **scalar-last (x, y, z, w)** order, scipy's
  ``Rotation.from_quat`` / ``as_quat`` convention. (MuJoCo stores w first; implementations convert.)
* **Time.** Every state, frame and target carries a timestamp in seconds on one clock: the host's
  ``time.monotonic()`` for real hardware and for the simulator in real-time mode; the
  simulator's own clock (``MjData.time``) in lockstep mode, where time only advances when the
  simulation is stepped.
* **Targets.** A target is a waypoint to be *reached at* time ``t``. The controller interpolates
  between successive targets at its servo rate (125 Hz CB3, 500 Hz e-Series), so a policy can
  send them at 5-30 Hz. A new target replaces the queued targets scheduled after it; a target
  whose time has passed is pursued at once, within the arm's speed limits.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


class DeviceError(RuntimeError):
    """A device (arm, gripper, camera) cannot serve: closed, disconnected, protective stop, or (sim) diverged."""


def check_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a float64 array of ``shape``, checked finite.

    Raises:
        ValueError: wrong shape, or any NaN / inf (an arm must never be sent one).
    """
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr}")
    return arr


def check_quat(name: str, quat) -> np.ndarray:
    """``quat`` (4,) as a unit quaternion (x, y, z, w), float64.

    Raises:
        ValueError: wrong shape, non-finite, or norm below 1e-6 (not a rotation).
    """
    q = check_array(name, quat, (4,))
    n = float(np.linalg.norm(q))
    if n < 1e-6:
        raise ValueError(f"{name} is not a rotation (norm {n:.3g})")
    return q / n


@dataclass(frozen=True)
class RobotState:
    """One sample of the arm's state.

    Attributes:
        joint_positions: (6,) float64 rad, base to wrist 3.
        joint_velocities: (6,) float64 rad/s.
        tcp_position: (3,) float64 m, TCP in the base frame.
        tcp_quat: (4,) float64 unit quaternion (x, y, z, w), TCP rotation in the base frame.
        timestamp: s on the host clock (see the module docstring).

    The gripper reports its own :class:`GripperState` (the arm's controller knows nothing of a
    tool-flange gripper's width).
    """

    joint_positions: np.ndarray
    joint_velocities: np.ndarray
    tcp_position: np.ndarray
    tcp_quat: np.ndarray
    timestamp: float

    @property
    def tcp_pose(self) -> np.ndarray:
        """(7,) float64: position (3,) m then quaternion (x, y, z, w)."""
        return np.concatenate([self.tcp_position, self.tcp_quat])


@dataclass(frozen=True)
class GripperState:
    """One sample of the gripper's state.

    Attributes:
        width: m between the fingers (measured, not commanded).
        timestamp: s on the host clock.
    """

    width: float
    timestamp: float


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    Attributes:
        rgb: (H, W, 3) uint8 RGB.
        timestamp: s on the host clock, the time the image was exposed (latency already removed
            where the driver knows it).
        frame_index: the camera's frame counter, counting from 0; gaps mean dropped frames.
        depth: (H, W) float32 m along the optical axis, or None when the camera gives no depth.
    """

    rgb: np.ndarray
    timestamp: float
    frame_index: int
    depth: np.ndarray | None = None


class Robot(abc.ABC):
    """A 6-axis arm taking timestamped TCP or joint targets (URScript's servoL / servoJ).

    All methods raise :class:`DeviceError` once the robot is closed or has lost its connection.
    Use as a context manager to :meth:`close` on exit.
    """

    @abc.abstractmethod
    def state(self) -> RobotState:
        """The latest state sample."""

    @abc.abstractmethod
    def states(self, n: int) -> list[RobotState]:
        """The newest ``n`` state samples (fewer at the start), oldest first, without waiting:
        the history an observation window is resampled from (at the controller's state rate)."""

    @abc.abstractmethod
    def servo_tcp(self, position, quat, t: float) -> None:
        """Move the TCP to ``position`` (3,) m, ``quat`` (4,) (x, y, z, w), both in the base frame, by time ``t`` s.

        The path from the previous target is linear in position and a slerp in rotation.

        Raises:
            ValueError: wrong shapes, NaN / inf, a zero quaternion, or a non-finite ``t``.
            DeviceError: see the class docstring.
        """

    @abc.abstractmethod
    def servo_joints(self, q, t: float) -> None:
        """Move the joints to ``q`` (6,) rad by time ``t`` s, linearly in joint space.

        Raises:
            ValueError: wrong shape, NaN / inf, or a non-finite ``t``.
            DeviceError: see the class docstring.
        """

    def forward_kinematics(self, q) -> tuple[np.ndarray, np.ndarray]:
        """The TCP at joints ``q`` (6,) rad: position (3,) m and quaternion (4,) (x, y, z, w), base
        frame (the safety filter's box check of joint targets).

        Raises:
            NotImplementedError: a robot that cannot say (joint targets are then refused).
        """
        raise NotImplementedError(f"{type(self).__name__} has no forward kinematics: it cannot take joint targets")

    @abc.abstractmethod
    def stop(self) -> None:
        """Drop all queued targets and hold the current pose (a controlled stop, not an e-stop)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop and release the connection. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Gripper(abc.ABC):
    """A parallel gripper commanded by opening width (a Robotiq 2F-85: 0 to 0.085 m)."""

    min_width: float = 0.0
    max_width: float = 0.085

    @abc.abstractmethod
    def set_width(self, width: float, t: float) -> None:
        """Open or close the fingers to ``width`` m by time ``t`` s (clipped to the stroke).

        On an object the fingers stop at its width and squeeze with the gripper's force limit.

        Raises:
            ValueError: a non-finite width or ``t``.
            DeviceError: the gripper is closed or lost.
        """

    @abc.abstractmethod
    def gripper_state(self) -> GripperState:
        """The latest measured state.

        Raises:
            DeviceError: the gripper is closed or lost.
        """

    @abc.abstractmethod
    def gripper_states(self, n: int) -> list[GripperState]:
        """The newest ``n`` samples (fewer at the start), oldest first, without waiting."""

    def width(self) -> float:
        """The measured finger opening, m."""
        return self.gripper_state().width


class Camera(abc.ABC):
    """A camera yielding the latest frame without blocking the control loop."""

    @abc.abstractmethod
    def read(self) -> Frame:
        """The most recent frame (the same frame, same index, if none arrived since the last call).

        Raises:
            DeviceError: the camera is closed or disconnected.
        """

    @abc.abstractmethod
    def frames(self, n: int) -> list[Frame]:
        """The newest ``n`` frames (fewer at the start), oldest first, without waiting.

        Raises:
            DeviceError: as :meth:`read`.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device. Idempotent."""

    @property
    def has_depth(self) -> bool:
        """Whether its frames carry ``depth`` (aligned to ``rgb``). False by default."""
        return False

    def info(self) -> dict:
        """What the episode store keeps about the camera (JSON-able): ``driver``, ``serial`` or
        ``device``, ``width``/``height`` px and ``fps`` Hz of the frames served, and ``intrinsics``
        {``fx``, ``fy``, ``ppx``, ``ppy`` px (pixel centres at integers, OpenCV's convention),
        ``model``, ``coeffs``} of those frames where the driver knows them. Empty by default."""
        return {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
