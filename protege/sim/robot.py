"""The simulated UR5e + 2F-85 (:class:`SimRobot`) and its cameras (:class:`SimCamera`).

The controller behaves like the e-Series servo loop: every 2 ms physics step (500 Hz) it evaluates
the target trajectory (linear / slerp between the timestamped targets, see
:mod:`protege.robot.interfaces`) and turns it into joint position commands for the UR5e's
position actuators:

* TCP targets go through differential inverse kinematics: one damped-least-squares step per
  tick on MuJoCo's site Jacobian (``mj_jacSite``), ``dq = J^T (J J^T + lambda^2 I)^-1 e`` with
  ``e`` the 6-D pose error (position m, rotation vector rad, base frame), integrated on the
  *commanded* joint positions (the controller's own state, as on the real arm), so a static
  target is reached to solver precision and the physical arm tracks it through its PD gains
  (gravity is compensated). Buss, "Introduction to Inverse Kinematics with Jacobian Transpose,
  Pseudoinverse and Damped Least Squares methods" (2004), section 5.
* Joint targets are interpolated linearly.
* Either way, commanded joint speeds are capped at ``max_joint_speed`` (the UR5e's pi rad/s) and
  positions at the joint limits.

Two time bases (:data:`CLOCKS`; :attr:`SimRobot.clock` is the :class:`~protege.robot.clock.Clock` over either): ``"lockstep"`` (time is the simulation's ``MjData.time``; it advances
only through :meth:`SimRobot.advance`, as fast as the CPU allows) and ``"realtime"`` (time is
``time.monotonic()``; every call first steps the simulation up to the wall clock, and
:meth:`SimRobot.advance_to` keeps stepping it while it waits, so the world moves on between
control steps as a real one does).

Threads: every method takes :attr:`SimRobot.lock`, so a camera's reader thread (see
:class:`SimCamera`) can step and render the simulation beside the control loop; code that reads
``robot.data`` directly while such a thread runs holds the lock.
"""

from __future__ import annotations

import threading
import time

import mujoco
import numpy as np

from protege.robot.clock import Clock
from protege.robot.frames import ThreadedCamera
from protege.robot.history import History
from protege.robot.interfaces import (Camera, DeviceError, Frame, Gripper, GripperState, Robot, RobotState, check_array,
                                      check_quat)
from protege.robot.trajectory import Trajectory, joint_min_duration, pose_lerp, pose_min_duration
from protege.sim.render import OffscreenRenderer
from protege.sim.scene import READY_Q, Scene

# 2F-85 calibration: finger-pad gap (m) at actuator commands 0, 15, ..., 255, measured in this
# scene after 1 s at each command (pad inner faces, along the TCP's y axis).
_GRIPPER_CTRL = np.linspace(0.0, 255.0, 18)
_GRIPPER_WIDTH = np.array([0.08517, 0.08082, 0.07631, 0.07167, 0.06689, 0.06199, 0.05698, 0.05186, 0.04664,
                           0.04135, 0.03598, 0.03055, 0.02507, 0.01955, 0.01400, 0.00843, 0.00286, 0.0])
GRIPPER_MAX_WIDTH = float(_GRIPPER_WIDTH[0])


def width_to_ctrl(width: float) -> float:
    """2F-85 actuator command (0 open ... 255 closed) for a finger gap ``width`` m (clipped to the stroke)."""
    return float(np.interp(width, _GRIPPER_WIDTH[::-1], _GRIPPER_CTRL[::-1]))


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """MuJoCo's scalar-first quaternion (4,) to scipy's scalar-last."""
    return np.asarray(q)[..., [1, 2, 3, 0]]


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Scipy's scalar-last quaternion (4,) to MuJoCo's scalar-first."""
    return np.asarray(q)[..., [3, 0, 1, 2]]


class _LockstepTime:
    """Host time == simulation time; nothing happens between calls."""

    realtime = False

    def reset(self, sim_time: float) -> None:
        pass

    def to_host(self, sim_time: float) -> float:
        return sim_time

    def to_sim(self, host_time: float) -> float:
        return host_time

    def due(self, sim_time: float) -> float:
        """The simulation time the simulation must reach now."""
        return sim_time


class _RealtimeTime:
    """Host time == ``time.monotonic()``; the simulation is stepped up to it on every call."""

    realtime = True

    def reset(self, sim_time: float) -> None:
        self.offset = time.monotonic() - sim_time

    def to_host(self, sim_time: float) -> float:
        return sim_time + self.offset

    def to_sim(self, host_time: float) -> float:
        return host_time - self.offset

    def due(self, sim_time: float) -> float:
        return time.monotonic() - self.offset


CLOCKS = {"lockstep": _LockstepTime, "realtime": _RealtimeTime}
# MuJoCo resets MjData when these fire; the counters survive the reset.
_DIVERGED = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC)


class SimClock(Clock):
    """The simulated arm's clock as a :class:`~protege.robot.clock.Clock`: ``sleep_until`` steps
    the simulation (lockstep: at once; realtime: along with the wall clock)."""

    def __init__(self, robot: "SimRobot"):
        self.robot = robot

    def now(self) -> float:
        # realtime: the host's clock, which the simulation's time maps onto (it may lag until stepped)
        return time.monotonic() if self.robot.realtime else self.robot.now()

    def sleep_until(self, t: float) -> None:
        self.robot.advance_to(t)

    @property
    def realtime(self) -> bool:
        return self.robot.realtime


class SimRobot(Robot, Gripper):
    """The simulated arm and gripper, driven like a UR e-Series through servoL / servoJ-style targets.

    Args:
        scene: a built :class:`~protege.sim.scene.Scene` (owned by this robot from now on).
        clock: ``"lockstep"`` or ``"realtime"`` (:data:`CLOCKS`).
        max_joint_speed: cap on commanded joint speed, rad/s.
        damping: lambda of the damped least squares (m, rad); larger is smoother near singularities.
        max_tcp_speed, max_tcp_angular_speed: speed limits m/s, rad/s of the TCP trajectory
            (:class:`~protege.robot.trajectory.Trajectory`): a target that would need more is
            reached later. None: no limit beyond ``max_joint_speed``.
        state_hz: rate of the state history :meth:`states` serves (RTDE: 500 Hz e-Series, 125 Hz CB3).
        history_s: length of that history, s.

    Raises:
        KeyError: an unknown clock.
    """

    def __init__(self, scene: Scene, clock: str = "lockstep", max_joint_speed: float = np.pi, damping: float = 0.01,
                 max_tcp_speed: float | None = None, max_tcp_angular_speed: float | None = None,
                 state_hz: float = 100.0, history_s: float = 2.0):
        if clock not in CLOCKS:
            raise KeyError(f"unknown clock {clock!r}; choose from {sorted(CLOCKS)}")
        self.scene, self.model, self.data = scene, scene.model, scene.data
        self._time = CLOCKS[clock]()
        self.clock = SimClock(self)
        self.max_joint_speed, self.damping = float(max_joint_speed), float(damping)
        self._pose_limit = (pose_min_duration(max_tcp_speed, max_tcp_angular_speed or np.inf)
                            if max_tcp_speed else None)
        self._joint_limit = joint_min_duration(self.max_joint_speed)
        self._kin = mujoco.MjData(self.model)  # scratch state for the IK's forward kinematics
        self._jac = np.zeros((6, self.model.nv))
        self._limits = self.model.jnt_range[[self.model.dof_jntid[i] for i in scene.arm_dof]].T.copy()
        # Velocity feed-forward: the actuators are PD (force = kp (ctrl - q) - kv qdot), so a command
        # ctrl = q_cmd + kv / kp * qdot_cmd tracks a moving reference without the kv / kp (0.2 s) lag.
        acts = scene.arm_act
        self._kv_over_kp = -self.model.actuator_biasprm[acts, 2] / self.model.actuator_gainprm[acts, 0]
        self._decimation = max(1, int(round(1.0 / (state_hz * self.model.opt.timestep))))
        n = max(2, int(round(history_s * state_hz)))
        self._log = _StateLog(n)
        self._closed = self._diverged = False
        self.lock = threading.RLock()
        self.resets = -1  # count of reset() calls, so cameras know a new episode began
        self.reset()

    @property
    def realtime(self) -> bool:
        """Whether the simulation runs on the wall clock (True) or in lockstep (False)."""
        return self._time.realtime

    @property
    def commanded_joint_positions(self) -> np.ndarray:
        """(6,) float64 rad: the servo loop's joint command (the UR controller's ``target_q``)."""
        return self._q_cmd.copy()

    @property
    def joint_limits(self) -> np.ndarray:
        """(2, 6) float64 rad: lower and upper limits of the arm's joints."""
        return self._limits.copy()

    # -- simulation-only API -------------------------------------------------------------------
    def reset(self, q=READY_Q, width: float = GRIPPER_MAX_WIDTH) -> None:
        """Reset the whole simulation to time 0, arm at ``q`` (6,) rad at rest, gripper at ``width`` m.

        Objects go back to the model's defaults; a task places them afterwards. Recovers a
        diverged simulation. The state histories start afresh.

        Raises:
            DeviceError: the robot was closed.
        """
        if self._closed:
            raise DeviceError("SimRobot is closed")
        q = check_array("q", q, (6,))
        with self.lock:
            self._reset(q, width)

    def _reset(self, q: np.ndarray, width: float) -> None:
        m, d, s = self.model, self.data, self.scene
        mujoco.mj_resetData(m, d)
        d.qpos[s.arm_qpos] = q
        d.ctrl[s.arm_act] = q
        d.ctrl[s.gripper_act] = width_to_ctrl(width)
        mujoco.mj_forward(m, d)
        self._q_cmd = q.copy()
        self._mode = "joint"
        self._joints = Trajectory(q, 0.0, min_duration=self._joint_limit)
        self._pose: Trajectory | None = None
        self._grip = Trajectory(np.array([width]), 0.0)
        self._time.reset(0.0)
        self.resets += 1
        self._diverged = False
        self._ticks = 0
        self._log.clear()
        self._record()

    def now(self) -> float:
        """Current time on this robot's clock, s."""
        return self._time.to_host(self.data.time)

    def sync(self) -> None:
        """Step the simulation up to the clock (a no-op in lockstep mode)."""
        self._check_open()
        self._step_until(self._time.due(self.data.time))

    def advance(self, duration: float) -> None:
        """Let ``duration`` s pass: step the simulation (lockstep) or sleep and catch up (realtime)."""
        self.advance_to(self.now() + float(duration))

    def advance_to(self, t: float) -> None:
        """Run until time ``t`` s on this robot's clock (no-op if past).

        In realtime mode this waits for the wall clock, stepping the simulation along in servo
        ticks meanwhile (releasing :attr:`lock` between them).
        """
        self._check_open()
        if self.realtime:
            while (left := t - time.monotonic()) > 0:
                self.sync()
                time.sleep(min(left, self.model.opt.timestep))
        self._step_until(self._time.to_sim(t))

    def _step_until(self, sim_time: float) -> None:
        dt = self.model.opt.timestep
        with self.lock:
            self._check_open()
            while self.data.time + 0.5 * dt < sim_time:
                self._tick()
            if any(self.data.warning[w].number for w in _DIVERGED) or not np.isfinite(self.data.qpos).all():
                self._diverged = True
                raise DeviceError(f"simulation diverged at t={self.data.time:.3f} s; reset() to go on")

    def _tick(self) -> None:
        """One 500 Hz servo cycle: interpolate the target, update the joint command, step physics."""
        m, d, s = self.model, self.data, self.scene
        t = d.time + m.opt.timestep
        if self._mode == "tcp":
            dq = self._ik_step(self._pose(t))
        else:
            dq = self._joints(t) - self._q_cmd
        limit = self.max_joint_speed * m.opt.timestep
        dq *= min(1.0, limit / max(float(np.max(np.abs(dq))), 1e-12))
        q_cmd = np.clip(self._q_cmd + dq, self._limits[0], self._limits[1])
        d.ctrl[s.arm_act] = q_cmd + self._kv_over_kp * (q_cmd - self._q_cmd) / m.opt.timestep
        self._q_cmd = q_cmd
        d.ctrl[s.gripper_act] = width_to_ctrl(float(self._grip(t)[0]))
        mujoco.mj_step(m, d)
        self._ticks += 1
        if self._ticks % self._decimation == 0:
            self._record()

    def _record(self) -> None:
        d, s = self.data, self.scene
        self._log.push(self.now(), d.qpos[s.arm_qpos], d.qvel[s.arm_dof], d.site_xpos[s.tcp_site], d.site_xmat[s.tcp_site],
                       d.geom_xpos[list(s.pad_geoms)])

    def _ik_step(self, target: np.ndarray) -> np.ndarray:
        """One damped-least-squares step (6,) rad from the commanded joints toward ``target`` (7,) pos + quat wxyz."""
        m, k, s = self.model, self._kin, self.scene
        k.qpos[s.arm_qpos] = self._q_cmd
        mujoco.mj_kinematics(m, k)
        mujoco.mj_comPos(m, k)
        err = np.empty(6)
        err[:3] = target[:3] - k.site_xpos[s.tcp_site]
        cur, inv, diff = np.empty(4), np.empty(4), np.empty(4)
        mujoco.mju_mat2Quat(cur, k.site_xmat[s.tcp_site])
        mujoco.mju_negQuat(inv, cur)
        mujoco.mju_mulQuat(diff, target[3:], inv)
        if diff[0] < 0.0:
            diff = -diff
        mujoco.mju_quat2Vel(err[3:], diff, 1.0)
        mujoco.mj_jacSite(m, k, self._jac[:3], self._jac[3:], s.tcp_site)
        jac = self._jac[:, s.arm_dof]
        return jac.T @ np.linalg.solve(jac @ jac.T + self.damping**2 * np.eye(6), err)

    def tcp_pose_of(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Forward kinematics: TCP position (3,) m and quaternion (4,) (x, y, z, w) in the base frame at joints ``q`` (6,)."""
        k, s = self._kin, self.scene
        k.qpos[s.arm_qpos] = check_array("q", q, (6,))
        mujoco.mj_kinematics(self.model, k)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, k.site_xmat[s.tcp_site])
        return k.site_xpos[s.tcp_site].copy(), wxyz_to_xyzw(quat)

    # -- Robot -------------------------------------------------------------------------------
    def forward_kinematics(self, q) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.tcp_pose_of(q)

    def _state(self) -> RobotState:
        d, s = self.data, self.scene
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, d.site_xmat[s.tcp_site])
        return RobotState(
            joint_positions=d.qpos[s.arm_qpos].copy(), joint_velocities=d.qvel[s.arm_dof].copy(),
            tcp_position=d.site_xpos[s.tcp_site].copy(), tcp_quat=wxyz_to_xyzw(quat), timestamp=self.now(),
        )

    def state(self) -> RobotState:
        with self.lock:
            self.sync()
            return self._state()

    def states(self, n: int) -> list[RobotState]:
        with self.lock:
            self.sync()
            out = []
            for t, q, qd, pos, mat, _ in self._log.last(n):
                quat = np.empty(4)
                mujoco.mju_mat2Quat(quat, mat)
                out.append(RobotState(q, qd, pos, wxyz_to_xyzw(quat), t))
            return out

    def servo_tcp(self, position, quat, t: float) -> None:
        position = check_array("position", position, (3,))
        quat = xyzw_to_wxyz(check_quat("quat", quat))
        t = float(check_array("t", t, ()))
        with self.lock:
            self.sync()
            now = self.data.time
            if self._mode != "tcp":
                pos, cur = self.tcp_pose_of(self._q_cmd)
                self._pose = Trajectory(np.concatenate([pos, xyzw_to_wxyz(cur)]), now, pose_lerp, self._pose_limit)
                self._mode = "tcp"
            self._pose.add(now, self._time.to_sim(t), np.concatenate([position, quat]))

    def servo_joints(self, q, t: float) -> None:
        q = check_array("q", q, (6,))
        t = float(check_array("t", t, ()))
        with self.lock:
            self.sync()
            now = self.data.time
            if self._mode != "joint":
                self._joints = Trajectory(self._q_cmd.copy(), now, min_duration=self._joint_limit)
                self._mode = "joint"
            self._joints.add(now, self._time.to_sim(t), q)

    def stop(self) -> None:
        with self.lock:
            self.sync()
            self._joints = Trajectory(self._q_cmd.copy(), self.data.time, min_duration=self._joint_limit)
            self._mode = "joint"
            self._grip = Trajectory(self._grip(self.data.time), self.data.time)

    def close(self) -> None:
        with self.lock:
            self._closed = True

    # -- Gripper -----------------------------------------------------------------------------
    min_width, max_width = 0.0, GRIPPER_MAX_WIDTH

    def set_width(self, width: float, t: float) -> None:
        width = float(np.clip(check_array("width", width, ()), 0.0, GRIPPER_MAX_WIDTH))
        t = float(check_array("t", t, ()))
        with self.lock:
            self.sync()
            self._grip.add(self.data.time, self._time.to_sim(t), np.array([width]))

    def gripper_state(self) -> GripperState:
        with self.lock:
            self.sync()
            return GripperState(self._measured_width(), self.now())

    def gripper_states(self, n: int) -> list[GripperState]:
        with self.lock:
            self.sync()
            return [GripperState(self._width_of(mat, pads), t) for t, _, _, _, mat, pads in self._log.last(n)]

    def _measured_width(self) -> float:
        d, s = self.data, self.scene
        return self._width_of(d.site_xmat[s.tcp_site], d.geom_xpos[list(s.pad_geoms)])

    def _width_of(self, tcp_xmat: np.ndarray, pad_xpos: np.ndarray) -> float:
        """Finger-pad gap m from the TCP's rotation matrix (9,) and the two pads' positions (2, 3)."""
        y_axis = tcp_xmat.reshape(3, 3)[:, 1]
        gap = abs(float(np.dot(pad_xpos[1] - pad_xpos[0], y_axis))) - 2 * self.model.geom_size[self.scene.pad_geoms[0]][1]
        return max(gap, 0.0)

    def _check_open(self) -> None:
        if self._closed or self._diverged:
            raise DeviceError("SimRobot is closed" if self._closed else "simulation diverged; reset() to go on")


class _StateLog:
    """The simulated controller's state history: raw samples in preallocated arrays (cheap enough
    to record at hundreds of Hz in lockstep), turned into states only when asked for."""

    def __init__(self, capacity: int):
        self.n = int(capacity)
        self.t = np.zeros(self.n)
        self.q, self.qd = np.zeros((self.n, 6)), np.zeros((self.n, 6))
        self.pos, self.mat, self.pads = np.zeros((self.n, 3)), np.zeros((self.n, 9)), np.zeros((self.n, 2, 3))
        self.clear()

    def clear(self) -> None:
        self.count = 0

    def push(self, t, q, qd, pos, mat, pads) -> None:
        k = self.count % self.n
        self.t[k], self.q[k], self.qd[k], self.pos[k], self.mat[k], self.pads[k] = t, q, qd, pos, mat, pads
        self.count += 1

    def last(self, n: int):
        """The newest ``min(n, len)`` samples, oldest first: (t, q, qd, pos, xmat, pad_xpos) copies."""
        k = min(max(n, 0), self.count, self.n)
        idx = [(self.count - k + i) % self.n for i in range(k)]
        return [(float(self.t[i]), self.q[i].copy(), self.qd[i].copy(), self.pos[i].copy(), self.mat[i].copy(),
                 self.pads[i].copy()) for i in idx]


class SimCamera(Camera):
    """A camera of the scene.

    In lockstep mode (and whenever ``fps`` is None) frames are rendered on demand, in the
    caller's thread, at the simulation's current state: deterministic, and a new frame only when
    time has moved on. In realtime mode with an ``fps``, a reader thread renders at ``fps`` on the
    wall clock into a ring buffer, like a real camera driver (:class:`~protege.robot.frames.ThreadedCamera`):
    :meth:`read` returns the newest frame without rendering, stamped with the simulation time it
    shows.

    Args:
        robot: the simulated robot whose scene (and clock) the camera sees.
        name: a camera of the scene (``"scene"``, ``"wrist"``).
        height, width: frame size, px (at most the scene's ``image_size``).
        renderer: share an :class:`OffscreenRenderer` of the same size between on-demand cameras;
            default: own one. (A threaded camera always has its own, made on its thread.)
        fps: frame rate of the reader thread in realtime mode, Hz; None renders on demand.
        history: frames kept for :meth:`frames` (on demand: the frames rendered by :meth:`read`
            since the simulation's last reset).

    Raises:
        KeyError: no camera called ``name``.
        ValueError: a renderer of another size, or a renderer given to a threaded camera.
    """

    def __init__(self, robot: SimRobot, name: str, height: int = 96, width: int = 96,
                 renderer: OffscreenRenderer | None = None, fps: float | None = None, history: int = 32):
        if mujoco.mj_name2id(robot.model, mujoco.mjtObj.mjOBJ_CAMERA, name) < 0:
            raise KeyError(f"no camera {name!r} in the scene")
        if renderer is not None and (renderer.height, renderer.width) != (height, width):
            raise ValueError(f"renderer is {renderer.height}x{renderer.width}, camera wants {height}x{width}")
        self.robot, self.name = robot, name
        self.size, self.fps = (int(height), int(width)), fps
        self._reader: ThreadedCamera | None = None
        self._renderer: OffscreenRenderer | None = None
        self._owns = renderer is None
        if fps is not None and robot.realtime:
            if renderer is not None:
                raise ValueError("a threaded SimCamera renders with its own renderer; pass renderer=None")
            self._reader = ThreadedCamera(_RenderSource(robot, name, height, width, float(fps)), name, capacity=history)
            return
        self._renderer = renderer or OffscreenRenderer(robot.model, height, width)
        self._frame: Frame | None = None
        self._sim_time = None
        self._index = -1
        self._history: History[Frame] = History(history)

    @property
    def threaded(self) -> bool:
        """Whether a reader thread renders the frames."""
        return self._reader is not None

    def read(self) -> Frame:
        """The newest frame: on demand, the frame at the current time (a new index only when time moved on)."""
        if self._reader is not None:
            return self._reader.read()
        if self._renderer is None:
            raise DeviceError(f"camera {self.name!r} is closed")
        with self.robot.lock:
            self.robot.sync()
            t = (self.robot.resets, self.robot.data.time)
            if self._frame is None or t != self._sim_time:
                if self._sim_time is None or t[0] != self._sim_time[0]:
                    self._history.clear()  # a new episode: simulated time started again
                self._index += 1
                rgb = self._renderer.render(self.robot.data, self.name)
                self._frame, self._sim_time = Frame(rgb, self.robot.now(), self._index), t
                self._history.push(self._frame)
            return self._frame

    def info(self) -> dict:
        """driver, size, fps and the pinhole intrinsics of the MuJoCo camera (its ``fovy``, square
        pixels, principal point at the centre, no distortion)."""
        h, w = self.size
        cam = mujoco.mj_name2id(self.robot.model, mujoco.mjtObj.mjOBJ_CAMERA, self.name)
        f = 0.5 * h / np.tan(np.radians(float(self.robot.model.cam_fovy[cam])) / 2)
        return {"driver": "mujoco", "device": self.name, "width": w, "height": h, "fps": self.fps,
                "intrinsics": {"fx": f, "fy": f, "ppx": (w - 1) / 2, "ppy": (h - 1) / 2, "model": "none",
                               "coeffs": [0.0] * 5}}

    def frames(self, n: int) -> list[Frame]:
        """The newest ``n`` frames, oldest first: the reader thread's (threaded), or those
        :meth:`read` rendered since the last reset, the current one included (on demand)."""
        if self._reader is not None:
            return self._reader.frames(n)
        self.read()
        return self._history.last(n)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._renderer is not None and self._owns:
            self._renderer.close()
        self._renderer = None


class _RenderSource:
    """:class:`~protege.robot.frames.FrameSource` of a realtime :class:`SimCamera`: every ``1 / fps`` s
    on the wall clock, step the simulation up to now and render it (the GL context lives on the reader thread)."""

    def __init__(self, robot: SimRobot, name: str, height: int, width: int, fps: float):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.robot, self.name, self.size, self.period = robot, name, (height, width), 1.0 / fps
        self.renderer: OffscreenRenderer | None = None
        self.index, self.next_t = -1, 0.0

    def open(self) -> None:
        self.renderer = OffscreenRenderer(self.robot.model, *self.size)
        self.next_t = time.monotonic()

    def grab(self) -> Frame:
        time.sleep(max(0.0, self.next_t - time.monotonic()))
        self.next_t = max(self.next_t + self.period, time.monotonic() - self.period)  # no burst after a stall
        with self.robot.lock:
            self.robot.sync()
            self.renderer.update(self.robot.data, self.name)
            t = self.robot.now()
        self.index += 1
        return Frame(self.renderer.draw(), t, self.index)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
