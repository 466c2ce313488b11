"""The trajectory interpolator every arm streams from: timestamped waypoints, linear in position
(or joints), slerp in rotation, with speed limits (DESIGN.md, "Clock and motion").

A controller (the simulated arm's 500 Hz servo loop, the UR driver's servoL / servoJ streamer)
keeps a :class:`Trajectory`, adds each target the caller sends with :meth:`Trajectory.add`, and
evaluates it at every servo tick. Semantics (those of Diffusion Policy's RTDE interpolation
controller, ``schedule_waypoint``):

* a target is a waypoint to be *reached at* its time ``t``;
* a new target replaces the waypoints scheduled at or after its time (replace-after-t), and the
  path to it starts from where the trajectory is *now*, so nothing jumps;
* a target in the past is reached as soon as the limits allow;
* with ``min_duration`` (see :func:`pose_min_duration`, :func:`joint_min_duration`), a waypoint
  that would need more than the speed limits is moved later, never reached faster.

Pure: no clock and no threads; the caller passes ``now``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (4,) (any component order, the same for both)
    at ``s`` in [0, 1], along the shortest arc."""
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(d)
    return (np.sin((1.0 - s) * th) * q0 + np.sin(s * th) * q1) / np.sin(th)


def quat_angle(q0: np.ndarray, q1: np.ndarray) -> float:
    """Angle rad of the rotation between unit quaternions (4,), in [0, pi]."""
    return 2.0 * float(np.arccos(np.clip(abs(np.dot(q0, q1)), 0.0, 1.0)))


def lerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    return a + s * (b - a)


def pose_lerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """Interpolate poses (7,) = position (3,) + quaternion (4,): linear, then slerp."""
    return np.concatenate([a[:3] + s * (b[:3] - a[:3]), slerp(a[3:], b[3:], s)])


def pose_min_duration(max_speed: float, max_angular_speed: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """Shortest time s between poses (7,) at ``max_speed`` m/s and ``max_angular_speed`` rad/s."""
    def f(a: np.ndarray, b: np.ndarray) -> float:
        return max(float(np.linalg.norm(b[:3] - a[:3])) / max_speed, quat_angle(a[3:], b[3:]) / max_angular_speed)
    return f


def joint_min_duration(max_speed: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """Shortest time s between joint vectors at ``max_speed`` rad/s on every joint."""
    return lambda a, b: float(np.max(np.abs(b - a))) / max_speed


class Trajectory:
    """A path through timestamped waypoints, evaluated by interpolation.

    Args:
        value: the value held until the first target (the current command), float array.
        t: its time, s.
        interp: ``interp(a, b, s)`` between two waypoint values, ``s`` in [0, 1]
            (:func:`lerp`, :func:`pose_lerp`).
        min_duration: ``min_duration(a, b)`` s, the least time the limits allow from ``a`` to
            ``b``; None for no limit.
    """

    def __init__(self, value, t: float, interp: Callable = lerp,
                 min_duration: Callable[[np.ndarray, np.ndarray], float] | None = None):
        self.times, self.values = [float(t)], [np.asarray(value, float)]
        self.interp, self.min_duration = interp, min_duration

    def __call__(self, t: float) -> np.ndarray:
        """The value at time ``t``: the first / last waypoint outside the path, interpolated inside."""
        times = self.times
        if t >= times[-1]:
            return self.values[-1]
        if t <= times[0]:
            return self.values[0]
        i = bisect.bisect_right(times, t)
        return self.interp(self.values[i - 1], self.values[i], (t - times[i - 1]) / (times[i] - times[i - 1]))

    @property
    def end_time(self) -> float:
        """Time s of the last waypoint."""
        return self.times[-1]

    def add(self, now: float, t: float, value) -> float:
        """Go from the current value at ``now`` through the kept waypoints to ``value`` at ``t``.

        Waypoints at or after ``t`` are dropped; a ``t`` in the past becomes ``now``; with
        ``min_duration`` the waypoint is moved later until the last segment respects the limits.

        Returns:
            The time s the waypoint is scheduled at (``t``, or later when limited).
        """
        t = max(float(t), now)
        value = np.asarray(value, float)
        keep = [(ti, vi) for ti, vi in zip(self.times, self.values) if now < ti < t]
        start = self(now)
        times = [now] + [k[0] for k in keep]
        values = [start] + [k[1] for k in keep]
        if self.min_duration is not None:
            t = max(t, times[-1] + self.min_duration(values[-1], value))
        self.times, self.values = times + [t], values + [value]
        return t

    def hold(self, now: float) -> None:
        """Drop every waypoint after ``now`` and hold the value there."""
        v = self(now)
        self.times, self.values = [float(now)], [v]
