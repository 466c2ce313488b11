"""The safety filter between a policy and the arm, and the arm's smooth stop.

Every target the control loop sends passes :meth:`SafetyFilter.filter`, configured per robot
(:class:`SafetyLimits`, the ``safety`` block of a ``robot=`` config):

* a non-finite or malformed action raises :class:`UnsafeAction`; it never reaches the robot;
* the TCP position is clipped to the workspace box (base frame);
* the commanded TCP velocity (between successive targets, one control period apart) is limited in
  acceleration, then in speed, and toward each wall of the box to a speed from which it can stop
  before the wall (so the box is never hit at speed), and the rotation in angular speed (a slerp
  toward the target);
* the gripper width is clipped to its range;
* every clip is counted by kind (:attr:`SafetyFilter.clips`) and reported with the target.

The measured state is checked every cycle (:meth:`SafetyFilter.check_state`): a joint within
``joint_margin`` of its limit, or turning faster than ``max_joint_speed``, raises
:class:`SafetyViolation`. (A TCP target's joint positions are the controller's inverse kinematics;
the filter judges the joints by what the arm does, as the UR's own safety system does.)

:meth:`SafetyFilter.stop_targets` is the smooth stop: from the commanded velocity, decelerate at
``max_tcp_accel`` to rest, then hold. :meth:`SafetyFilter.start_gate` is the start gate: the
first target must lie near the measured pose, or the arm ramps there slowly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from ..robot.actions import action_to_pose
from ..robot.interfaces import RobotState
from ..robot.trajectory import quat_angle, slerp


class UnsafeAction(ValueError):
    """An action that must not reach the robot (NaN / inf, or a degenerate rotation)."""


class SafetyViolation(RuntimeError):
    """The measured state broke a limit (a joint near its limit or too fast)."""


@dataclass(frozen=True)
class SafetyLimits:
    """Limits of one robot (SI units, base frame).

    Attributes:
        workspace_min, workspace_max: (3,) m, the box the TCP must stay in.
        max_tcp_speed: m/s of the commanded TCP.
        max_tcp_accel: m/s^2 of the commanded TCP (also the smooth stop's deceleration).
        max_tcp_angular_speed: rad/s of the commanded TCP rotation.
        joint_min, joint_max: (6,) rad joint limits; joint_margin rad: stop this close to one.
        max_joint_speed: rad/s, measured, on any joint.
        gripper_min, gripper_max: m, the commanded width's range.
        start_max_distance: m, start_max_angle: rad: how far the first target may lie from the
            measured TCP pose before the start gate refuses it.
        start_ramp_speed: m/s (and rad/s) of the slow move to a far first target, when ramping.
        max_cmd_joint_speed: rad/s, max_cmd_joint_accel: rad/s^2: of commanded joint targets
            (a joint-space device, :class:`JointSafetyFilter`).
    """

    workspace_min: tuple = (-np.inf, -np.inf, -np.inf)
    workspace_max: tuple = (np.inf, np.inf, np.inf)
    max_tcp_speed: float = 0.5
    max_tcp_accel: float = 4.0
    max_tcp_angular_speed: float = 2.0
    joint_min: tuple = (-2 * np.pi,) * 6
    joint_max: tuple = (2 * np.pi,) * 6
    joint_margin: float = 0.05
    max_joint_speed: float = 3.0
    gripper_min: float = 0.0
    gripper_max: float = 0.085
    start_max_distance: float = 0.05
    start_max_angle: float = 0.35
    start_ramp_speed: float = 0.05
    max_cmd_joint_speed: float = 1.5
    max_cmd_joint_accel: float = 8.0

    def __post_init__(self):
        for name in ("workspace_min", "workspace_max", "joint_min", "joint_max"):
            arr = np.asarray(getattr(self, name), float)
            want = 3 if name.startswith("workspace") else 6
            if arr.shape != (want,) or np.isnan(arr).any():
                raise ValueError(f"safety.{name} must be {want} numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(x) for x in arr))
        if not np.all(np.asarray(self.workspace_min) < np.asarray(self.workspace_max)):
            raise ValueError(f"safety.workspace_min {self.workspace_min} must lie below workspace_max {self.workspace_max}")
        if not np.all(np.asarray(self.joint_min) + 2 * self.joint_margin < np.asarray(self.joint_max)):
            raise ValueError("safety.joint_min + 2 joint_margin must lie below joint_max")
        for name in ("max_tcp_speed", "max_tcp_accel", "max_tcp_angular_speed", "max_joint_speed", "start_max_distance",
                     "start_max_angle", "start_ramp_speed", "max_cmd_joint_speed", "max_cmd_joint_accel"):
            v = float(getattr(self, name))
            if not (v > 0 and np.isfinite(v)):
                raise ValueError(f"safety.{name} must be a positive number, got {getattr(self, name)!r}")
        if not 0 <= self.joint_margin:
            raise ValueError(f"safety.joint_margin must be >= 0, got {self.joint_margin}")
        if not self.gripper_min < self.gripper_max:
            raise ValueError(f"safety.gripper_min {self.gripper_min} must lie below gripper_max {self.gripper_max}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SafetyLimits":
        """From a config mapping (the robot config's ``safety`` block).

        Raises:
            ValueError: an unknown key, or a value out of range (see the attributes).
        """
        names = {f.name for f in fields(cls)}
        unknown = set(cfg) - names
        if unknown:
            raise ValueError(f"unknown safety settings {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if np.ndim(v) else v for k, v in dict(cfg).items()})


@dataclass(frozen=True)
class Target:
    """A filtered target: TCP ``position`` (3,) m, ``quat`` (4,) (x, y, z, w), gripper ``width`` m,
    and the kinds of clip applied to it."""

    position: np.ndarray
    quat: np.ndarray
    width: float
    clipped: tuple[str, ...] = ()
    joints: np.ndarray | None = None  # (6,) rad: a joint target (JointSafetyFilter), sent with servoJ


class SafetyFilter:
    """Filters TCP targets one control period ``dt`` s apart (see the module docstring).

    Call :meth:`reset` (or :meth:`reset_to`) with the measured state before the first target.
    """

    action_dim = 10  # TCP position, 6-D rotation, gripper width (protege.robot.actions)

    def __init__(self, limits: SafetyLimits, dt: float):
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.limits, self.dt = limits, float(dt)
        self._lo, self._hi = np.asarray(limits.workspace_min), np.asarray(limits.workspace_max)
        self.clips: Counter[str] = Counter()
        self.position = self.quat = None
        self.velocity = np.zeros(3)

    def reset(self, position, quat, velocity=None) -> None:
        """Start from the measured TCP ``position`` (3,) m and ``quat`` (4,), at ``velocity`` (3,) m/s (default rest)."""
        self.position = np.asarray(position, float).copy()
        self.quat = np.asarray(quat, float) / np.linalg.norm(quat)
        self.velocity = np.zeros(3) if velocity is None else np.asarray(velocity, float).copy()

    def reset_to(self, state: RobotState) -> None:
        """Start from a measured state, at rest."""
        self.reset(state.tcp_position, state.tcp_quat)

    def send(self, robot, target: Target, t: float) -> None:
        """Command ``target`` to be reached at ``t`` s (servoL)."""
        robot.servo_tcp(target.position, target.quat, t)

    def action_of(self, target: Target) -> np.ndarray:
        """The stored action of a sent target (10,): what the arm was told, in the action layout."""
        from ..robot.actions import pose_to_action

        return pose_to_action(target.position, target.quat, target.width)

    def unfiltered(self, action) -> Target:
        """``action`` as a target, the gripper clipped to its range, nothing else (the start ramp's
        slow move to a far first target).

        Raises:
            UnsafeAction: see :meth:`filter`.
        """
        pos, quat, width = self._parse(action)
        return Target(pos, quat, float(np.clip(width, self.limits.gripper_min, self.limits.gripper_max)))

    def stop_path(self) -> list[Target]:
        """:meth:`stop_targets` as targets (rotation held)."""
        return [Target(p, self.quat.copy(), float("nan")) for p in self.stop_targets()]

    def start_gate(self, action) -> tuple[float, float]:
        """(distance m, angle rad) from the current pose to ``action``'s target; the caller
        refuses (or ramps) when either exceeds ``start_max_distance`` / ``start_max_angle``.

        Raises:
            UnsafeAction: see :meth:`filter`.
        """
        pos, quat, _ = self._parse(action)
        return float(np.linalg.norm(pos - self.position)), quat_angle(self.quat, quat)

    def start_ok(self, action) -> bool:
        d, a = self.start_gate(action)
        return d <= self.limits.start_max_distance and a <= self.limits.start_max_angle

    @staticmethod
    def _parse(action) -> tuple[np.ndarray, np.ndarray, float]:
        a = np.asarray(action, float)
        if not np.all(np.isfinite(a)):
            raise UnsafeAction(f"non-finite action {a}")
        try:
            return action_to_pose(a)
        except ValueError as e:
            raise UnsafeAction(str(e)) from e

    def filter(self, action) -> Target:
        """The safe target for one control period from now, for an action (10,) (TCP position,
        6-D rotation, gripper width; :mod:`protege.robot.actions`).

        Raises:
            UnsafeAction: NaN / inf or a degenerate rotation (nothing is sent, the state is kept).
        """
        if self.position is None:
            raise RuntimeError("SafetyFilter.reset() with the measured state first")
        lim, dt = self.limits, self.dt
        pos, quat, width = self._parse(action)
        clipped = []
        boxed = np.clip(pos, self._lo, self._hi)
        if not np.allclose(boxed, pos, atol=1e-9):
            clipped.append("workspace")
        v = (boxed - self.position) / dt
        dv = v - self.velocity
        max_dv = lim.max_tcp_accel * dt
        if (n := np.linalg.norm(dv)) > max_dv * (1 + 1e-9):
            v = self.velocity + dv * (max_dv / n)
            clipped.append("tcp_accel")
        if (n := np.linalg.norm(v)) > lim.max_tcp_speed * (1 + 1e-9):
            v *= lim.max_tcp_speed / n
            clipped.append("tcp_speed")
        # brake for the walls: toward each wall no faster than a stop within the distance left allows
        cap_hi, cap_lo = self._brake_cap(self._hi - self.position), self._brake_cap(self.position - self._lo)
        braked = np.clip(v, -cap_lo, cap_hi)
        if not np.allclose(braked, v, atol=1e-12):
            v = braked
            if "workspace" not in clipped:
                clipped.append("workspace")
        new = np.clip(self.position + v * dt, self._lo, self._hi)
        angle, max_angle = quat_angle(self.quat, quat), lim.max_tcp_angular_speed * dt
        if angle > max_angle * (1 + 1e-9):
            quat = slerp(self.quat, quat if np.dot(self.quat, quat) >= 0 else -quat, max_angle / angle)
            clipped.append("tcp_angular_speed")
        if not lim.gripper_min - 1e-6 <= width <= lim.gripper_max + 1e-6:  # (float32 actions)
            clipped.append("gripper_range")
        width = float(np.clip(width, lim.gripper_min, lim.gripper_max))
        self.velocity = (new - self.position) / dt
        self.position, self.quat = new, quat / np.linalg.norm(quat)
        self.clips.update(clipped)
        return Target(new.copy(), self.quat.copy(), width, tuple(clipped))

    def _brake_cap(self, distance: np.ndarray) -> np.ndarray:
        """Per axis, the largest speed m/s from which the discrete stop (speed falling by
        ``max_tcp_accel * dt`` each period) ends within ``distance`` m. That stop covers at most
        v^2 / (2 a) + v dt, so v = a (sqrt(dt^2 + 2 d / a) - dt); following this cap decelerates
        by less than a dt per period."""
        a, dt = self.limits.max_tcp_accel, self.dt
        return a * (np.sqrt(dt * dt + 2.0 * np.maximum(distance, 0.0) / a) - dt)

    def inside(self, position) -> bool:
        """Whether ``position`` (3,) m lies in the workspace box."""
        p = np.asarray(position, float)
        return bool(np.all(p >= self._lo - 1e-9) and np.all(p <= self._hi + 1e-9))

    def check_state(self, state: RobotState) -> None:
        """Raises :class:`SafetyViolation` when a measured joint is within ``joint_margin`` of a
        limit or turns faster than ``max_joint_speed``."""
        lim = self.limits
        q, qd = state.joint_positions, state.joint_velocities
        near = (q < np.asarray(lim.joint_min) + lim.joint_margin) | (q > np.asarray(lim.joint_max) - lim.joint_margin)
        if near.any():
            j = int(np.flatnonzero(near)[0])
            raise SafetyViolation(f"joint {j} at {q[j]:.3f} rad is within {lim.joint_margin} rad of its limit "
                                  f"[{lim.joint_min[j]:.3f}, {lim.joint_max[j]:.3f}]")
        fast = np.abs(qd) > lim.max_joint_speed
        if fast.any():
            j = int(np.flatnonzero(fast)[0])
            raise SafetyViolation(f"joint {j} turns at {qd[j]:.2f} rad/s, above max_joint_speed {lim.max_joint_speed}")

    def stop_targets(self) -> list[np.ndarray]:
        """TCP positions (3,), one per control period, that bring the commanded velocity to rest
        at ``max_tcp_accel`` (less where a wall needs more braking, then at most that per axis),
        inside the workspace; the rotation and width hold. Updates the filter's state to the last
        of them (at rest)."""
        out = []
        p, v = self.position.copy(), self.velocity.copy()
        step = self.limits.max_tcp_accel * self.dt
        while (n := np.linalg.norm(v)) > 1e-9:
            v = v * max(0.0, n - step) / n
            v = np.clip(v, -self._brake_cap(p - self._lo), self._brake_cap(self._hi - p))
            p = np.clip(p + v * self.dt, self._lo, self._hi)
            out.append(p.copy())
        self.position, self.velocity = p, np.zeros(3)
        return out


class JointSafetyFilter(SafetyFilter):
    """Filters joint targets (a leader arm's: GELLO) one control period ``dt`` s apart, through the
    same limits as TCP targets: an action is (7,) = 6 joint positions rad + gripper width m.

    * non-finite or malformed: :class:`UnsafeAction`, nothing sent;
    * each joint clipped to ``[joint_min + 2 joint_margin, joint_max - 2 joint_margin]`` (the
      measured-state check stops the arm at ``joint_margin``);
    * the commanded joint velocity limited in acceleration (``max_cmd_joint_accel``), then in speed
      (``max_cmd_joint_speed``);
    * the TCP of the target (``forward_kinematics``) kept in the workspace box and under
      ``max_tcp_speed`` / ``max_tcp_angular_speed``: the joint step is shortened (bisection along
      it) until its TCP is inside and slow enough;
    * the gripper clipped to its range. The smooth stop decelerates the joints at ``max_cmd_joint_accel``.

    Args:
        forward_kinematics: ``q (6,) -> (position (3,), quat (4,))``, the robot's
            (:meth:`~protege.robot.interfaces.Robot.forward_kinematics`).
    """

    action_dim = 7

    def __init__(self, limits: SafetyLimits, dt: float, forward_kinematics):
        super().__init__(limits, dt)
        self.fk = forward_kinematics
        m = 2 * limits.joint_margin
        self._qlo, self._qhi = np.asarray(limits.joint_min) + m, np.asarray(limits.joint_max) - m
        self.q = None
        self.qd = np.zeros(6)

    def reset_to(self, state: RobotState) -> None:
        super().reset_to(state)
        self.q, self.qd = np.asarray(state.joint_positions, float).copy(), np.zeros(6)

    def send(self, robot, target: Target, t: float) -> None:
        robot.servo_joints(target.joints, t)

    def action_of(self, target: Target) -> np.ndarray:
        return np.concatenate([target.joints, [target.width]])

    def _parse_joints(self, action) -> tuple[np.ndarray, float]:
        a = np.asarray(action, float)
        if a.shape != (7,):
            raise UnsafeAction(f"a joint action is 6 joint positions (rad) + the gripper width (m), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise UnsafeAction(f"non-finite action {a}")
        return a[:6], float(a[6])

    def unfiltered(self, action) -> Target:
        q, width = self._parse_joints(action)
        q = np.clip(q, self._qlo, self._qhi)
        pos, quat = self.fk(q)
        return Target(pos, quat, float(np.clip(width, self.limits.gripper_min, self.limits.gripper_max)), (), q)

    def start_gate(self, action) -> tuple[float, float]:
        t = self.unfiltered(action)
        return float(np.linalg.norm(t.position - self.position)), quat_angle(self.quat, t.quat)

    def _ok(self, pos, quat) -> bool:
        lim = self.limits
        return (self.inside(pos) and np.linalg.norm(pos - self.position) <= lim.max_tcp_speed * self.dt * (1 + 1e-9)
                and quat_angle(self.quat, quat) <= lim.max_tcp_angular_speed * self.dt * (1 + 1e-9))

    def filter(self, action) -> Target:
        """The safe joint target for one control period from now (see the class docstring).

        Raises:
            UnsafeAction: NaN / inf or a wrong shape (nothing is sent, the state is kept).
        """
        if self.q is None:
            raise RuntimeError("JointSafetyFilter.reset_to() with the measured state first")
        lim, dt = self.limits, self.dt
        q, width = self._parse_joints(action)
        clipped = []
        qc = np.clip(q, self._qlo, self._qhi)
        if not np.allclose(qc, q, atol=1e-9):
            clipped.append("joint_limit")
        v = (qc - self.q) / dt
        dv, max_dv = v - self.qd, lim.max_cmd_joint_accel * dt
        if (n := np.abs(dv).max()) > max_dv * (1 + 1e-9):
            v = self.qd + dv * (max_dv / n)
            clipped.append("joint_accel")
        if (n := np.abs(v).max()) > lim.max_cmd_joint_speed * (1 + 1e-9):
            v *= lim.max_cmd_joint_speed / n
            clipped.append("joint_speed")
        step = v * dt
        pos, quat = self.fk(self.q + step)
        if not self._ok(pos, quat):  # the longest fraction of the step whose TCP is inside and slow enough
            lo, hi = 0.0, 1.0
            for _ in range(12):
                mid = 0.5 * (lo + hi)
                if self._ok(*self.fk(self.q + mid * step)):
                    lo = mid
                else:
                    hi = mid
            step = lo * step
            pos, quat = self.fk(self.q + step)
            clipped.append("workspace" if not self.inside(self.fk(self.q + v * dt)[0]) else "tcp_speed")
        if not lim.gripper_min - 1e-6 <= width <= lim.gripper_max + 1e-6:
            clipped.append("gripper_range")
        width = float(np.clip(width, lim.gripper_min, lim.gripper_max))
        new_q = self.q + step
        self.qd, self.q = step / dt, new_q
        self.velocity = (pos - self.position) / dt
        self.position, self.quat = np.asarray(pos, float), np.asarray(quat, float) / np.linalg.norm(quat)
        self.clips.update(clipped)
        return Target(self.position.copy(), self.quat.copy(), width, tuple(clipped), new_q.copy())

    def stop_path(self) -> list[Target]:
        """Joint targets, one per control period, that bring the joints to rest at
        ``max_cmd_joint_accel`` (each joint's speed falls at that rate); updates the state to the last."""
        out = []
        step = self.limits.max_cmd_joint_accel * self.dt
        while (n := np.abs(self.qd).max()) > 1e-9:
            self.qd = self.qd * max(0.0, n - step) / n
            q = np.clip(self.q + self.qd * self.dt, self._qlo, self._qhi)
            pos, quat = self.fk(q)
            if not self.inside(pos):  # the box's wall: hold here
                break
            self.q, self.position, self.quat = q, np.asarray(pos, float), np.asarray(quat, float)
            out.append(Target(self.position.copy(), self.quat.copy(), float("nan"), (), q.copy()))
        self.velocity, self.qd = np.zeros(3), np.zeros(6)
        return out
