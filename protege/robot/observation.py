"""Observation assembly: robots, grippers and named cameras turned into the episode store's keys,
resampled to the observation times from the devices' histories (DESIGN.md, "Observation assembly").

Recording, lockstep evaluation and deployment all build their observations here; a backend
supplies devices, never its own copy of this logic.

Keys (the store schema; :data:`KEY_META` has units and frames):

=================== ================ ====================================================================
``<camera>_rgb``    (H, W, 3) uint8  each named camera, RGB (``scene_rgb``, ``wrist_rgb``, ...)
``<camera>_depth``  (H, W) uint16    a camera with depth: mm along its optical axis, aligned to
                                     ``<camera>_rgb`` pixel for pixel, 0 where there is no depth
``tcp_pose``        (7,) float32     TCP position m (base frame) + quaternion (x, y, z, w); the quaternion's
                                     sign is kept continuous within an episode (it never jumps to -q)
``joint_positions`` (6,) float32     rad, base to wrist 3
``gripper_width``   (1,) float32     m, measured finger gap
``timestamp``       (1,) float64     s, the observation time on the robot's clock
=================== ================ ====================================================================

Time alignment (as in Diffusion Policy's real-robot environment): a sample stamped ``ts`` by its
driver shows the world at ``ts - latency`` (``camera_latency_s``, ``robot_obs_latency_s``,
``gripper_latency_s``, measured by calibration). For each observation time ``t`` the robot and
gripper state are interpolated between the two samples around ``t`` (linear, slerp for the
rotation) and each camera gives its newest frame taken at or before ``t``. Samples from before
the episode's start (:meth:`ObservationAssembler.reset`) are never used: a window reaching before
it repeats the first sample, as training's edge padding does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .interfaces import Camera, DeviceError, Frame, Gripper, Robot, RobotState
from .trajectory import slerp

KEY_META = {  # units and frames recorded in the store's attributes
    "tcp_pose": {"unit": "m, quaternion (x, y, z, w)", "frame": "robot base"},
    "joint_positions": {"unit": "rad", "frame": "joint"},
    "gripper_width": {"unit": "m", "frame": ""},
    "timestamp": {"unit": "s", "frame": "robot clock"},
    "action": {"unit": "m, 6-D rotation, m (protege.robot.actions)", "frame": "robot base"},
}
LOW_DIM_KEYS = ("tcp_pose", "joint_positions", "gripper_width", "timestamp")
_EPS = 1e-6


def _interp_index(times: np.ndarray, t: float) -> tuple[int, int, float]:
    """(i, j, s): ``t`` lies a fraction ``s`` of the way from ``times[i]`` to ``times[j]``; clamped at the ends."""
    if t <= times[0]:
        return 0, 0, 0.0
    if t >= times[-1]:
        return len(times) - 1, len(times) - 1, 0.0
    j = int(np.searchsorted(times, t, side="right"))
    i = j - 1
    return i, j, float((t - times[i]) / max(times[j] - times[i], 1e-12))


def _depth_mm(key: str, frame: Frame) -> np.ndarray:
    """A frame's depth (m, float) as the store's uint16 mm (0: none; beyond 65.535 m: 0)."""
    if frame.depth is None:
        raise DeviceError(f"{key}: frame #{frame.frame_index} carries no depth")
    mm = np.round(np.nan_to_num(frame.depth, nan=0.0, posinf=0.0) * 1000.0)
    return np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)


class ObservationAssembler:
    """One step (or a window of steps) of the store's keys from a robot, a gripper and cameras.

    Args:
        robot: the arm (its :meth:`~protege.robot.interfaces.Robot.states` history).
        gripper: the gripper, or None for an arm without one (no ``gripper_width`` key).
        cameras: name -> camera; each gives the key ``<name>_rgb``.
        camera_latency_s: s, one for every camera or name -> s.
        robot_obs_latency_s, gripper_latency_s: s from the state's instant to its stamp.
        max_history: the most samples asked of a device per window.

    Raises:
        ValueError: a negative latency, or latencies for cameras that do not exist.
    """

    def __init__(self, robot: Robot, gripper: Gripper | None, cameras: Mapping[str, Camera],
                 camera_latency_s: float | Mapping[str, float] = 0.0, robot_obs_latency_s: float = 0.0,
                 gripper_latency_s: float = 0.0, max_history: int = 1024):
        self.robot, self.gripper, self.cameras = robot, gripper, dict(cameras)
        if isinstance(camera_latency_s, Mapping):
            unknown = set(camera_latency_s) - set(self.cameras)
            if unknown:
                raise ValueError(f"camera_latency_s names cameras {sorted(unknown)} that are not configured ({sorted(self.cameras)})")
            self.camera_latency_s = {n: float(camera_latency_s.get(n, 0.0)) for n in self.cameras}
        else:
            self.camera_latency_s = {n: float(camera_latency_s) for n in self.cameras}
        self.robot_obs_latency_s, self.gripper_latency_s = float(robot_obs_latency_s), float(gripper_latency_s)
        if min([self.robot_obs_latency_s, self.gripper_latency_s, *self.camera_latency_s.values()]) < 0:
            raise ValueError("latencies must be >= 0 s")
        self.max_history = int(max_history)
        self.reset(-np.inf)

    @property
    def store_keys(self) -> tuple[str, ...]:
        """Every key this assembler can produce."""
        low = LOW_DIM_KEYS if self.gripper is not None else tuple(k for k in LOW_DIM_KEYS if k != "gripper_width")
        depth = tuple(f"{n}_depth" for n, c in self.cameras.items() if getattr(c, "has_depth", False))
        return tuple(f"{n}_rgb" for n in self.cameras) + depth + low

    @property
    def key_meta(self) -> dict[str, dict[str, str]]:
        """Units and frames of every key (and of the TCP-pose action), for the store's attributes."""
        depth = {f"{n}_depth": {"unit": f"mm (0: no depth), aligned to {n}_rgb", "frame": f"{n} camera"}
                 for n, c in self.cameras.items() if getattr(c, "has_depth", False)}
        return {**{f"{n}_rgb": {"unit": "RGB", "frame": f"{n} camera"} for n in self.cameras}, **depth, **KEY_META}

    def reset(self, t_start: float) -> None:
        """A new episode starts at ``t_start`` s: forget the quaternion sign and ignore older samples."""
        self.t_start = float(t_start)
        self._quat_prev: np.ndarray | None = None

    # -- device histories ---------------------------------------------------------------------
    def _history(self, get, fresh, t_min: float, latency: float) -> tuple[np.ndarray, list]:
        """Samples (adjusted times, samples) from ``get(n)`` plus ``fresh`` covering ``t_min``, within the episode."""
        n = 16
        while True:
            samples = list(get(n))
            if len(samples) < n or n >= self.max_history or (samples and samples[0].timestamp - latency <= t_min):
                break
            n *= 4
        if fresh is not None and (not samples or fresh.timestamp > samples[-1].timestamp):
            samples.append(fresh)
        kept = [s for s in samples if s.timestamp >= self.t_start - _EPS]
        samples = kept or samples[-1:]
        return np.array([s.timestamp - latency for s in samples]), samples

    def _robot_at(self, times: Sequence[float]) -> list[RobotState]:
        ts, states = self._history(self.robot.states, self.robot.state(), min(times), self.robot_obs_latency_s)
        out = []
        for t in times:
            i, j, s = _interp_index(ts, t)
            a, b = states[i], states[j]
            if i == j:
                out.append(a)
                continue
            out.append(RobotState(
                joint_positions=a.joint_positions + s * (b.joint_positions - a.joint_positions),
                joint_velocities=a.joint_velocities + s * (b.joint_velocities - a.joint_velocities),
                tcp_position=a.tcp_position + s * (b.tcp_position - a.tcp_position),
                tcp_quat=slerp(a.tcp_quat, b.tcp_quat, s), timestamp=t,
            ))
        return out

    def _gripper_at(self, times: Sequence[float]) -> list[float]:
        g = self.gripper
        ts, states = self._history(g.gripper_states, g.gripper_state(), min(times), self.gripper_latency_s)
        widths = np.array([s.width for s in states])
        return [float(np.interp(t, ts, widths)) for t in times]

    def _frames_at(self, name: str, times: Sequence[float]) -> list[Frame]:
        cam = self.cameras[name]
        cam.read()  # raises DeviceError for a closed or failed camera; renders on demand
        ts, frames = self._history(cam.frames, None, min(times), self.camera_latency_s[name])
        out = []
        for t in times:
            k = int(np.searchsorted(ts, t + _EPS, side="right")) - 1
            out.append(frames[max(k, 0)])
        return out

    # -- observations ---------------------------------------------------------------------------
    def window(self, times: Sequence[float], keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The store's ``keys`` (default: all) at each of ``times`` (increasing, s): {key: (T, ...)}.

        Raises:
            KeyError: a key this assembler cannot produce.
            DeviceError: a device failed (the driver's error).
        """
        keys = list(self.store_keys if keys is None else keys)
        unknown = set(keys) - set(self.store_keys)
        if unknown:
            raise KeyError(f"no observation keys {sorted(unknown)}; this robot and its cameras give {list(self.store_keys)}")
        times = [max(float(t), self.t_start) for t in times]
        out: dict[str, np.ndarray] = {}
        if {"tcp_pose", "joint_positions"} & set(keys):
            states = self._robot_at(times)
            quats = []
            for st in states:
                q = st.tcp_quat
                if self._quat_prev is not None and np.dot(q, self._quat_prev) < 0:
                    q = -q
                self._quat_prev = q
                quats.append(q)
            out["tcp_pose"] = np.stack([np.concatenate([s.tcp_position, q]) for s, q in zip(states, quats)]).astype(np.float32)
            out["joint_positions"] = np.stack([s.joint_positions for s in states]).astype(np.float32)
        if "gripper_width" in keys:
            out["gripper_width"] = np.array(self._gripper_at(times), np.float32)[:, None]
        out["timestamp"] = np.array(times, np.float64)[:, None]
        for k in keys:
            if k.endswith("_rgb"):
                out[k] = np.stack([f.rgb for f in self._frames_at(k[: -len("_rgb")], times)])
            elif k.endswith("_depth"):
                out[k] = np.stack([_depth_mm(k, f) for f in self._frames_at(k[: -len("_depth")], times)])
        return {k: out[k] for k in keys}

    def at(self, t: float, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One step: the store's ``keys`` at time ``t`` s, {key: per-step array}."""
        return {k: v[0] for k, v in self.window([t], keys).items()}
