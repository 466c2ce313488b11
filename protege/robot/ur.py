"""A Universal Robots arm (UR3/5/10/16, e-Series at 500 Hz or CB3 at 125 Hz) over RTDE through ``ur-rtde``.

:class:`URRobot` implements :class:`~protege.robot.interfaces.Robot`. A process of its own (so
that neither the GIL nor a slow policy step can delay a set-point) runs the servo loop, the
scheme of Diffusion Policy's and UMI's ``RTDEInterpolationController``:

* every servo period (``1 / frequency``) it takes the targets the caller queued, adds them to a
  :class:`~protege.robot.trajectory.Trajectory` (reach-at-t, replace-after-t, slerp, speed
  limits), evaluates it at the current time and streams the result with ``servoL`` (TCP
  targets) or ``servoJ`` (joint targets), with the configured lookahead time and gain;
* it reads the state through ``rtde_receive`` and publishes it into shared memory, stamped on
  the host's ``time.monotonic()``: the controller's ``timestamp`` plus an offset measured once at
  connection (the smallest host-minus-controller difference of the first samples, which removes
  the network delay's jitter);
* a protective stop, an emergency stop, a stopped control script (the RTDE watchdog, a
  dashboard stop) or a lost or silent connection ends the loop; the caller's next call raises
  :class:`~protege.robot.interfaces.DeviceError` with the reason;
* on every exit (close, error, the parent process gone) it sends ``servoStop`` and
  ``stopScript``; the controller-side RTDE watchdog (``watchdog_hz``) stops the arm if the loop
  itself dies.

The caller never blocks on the network: targets go into a queue, the state comes from shared
memory, and a state older than ``state_timeout_s`` raises.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from protege.robot.clock import HostClock
from protege.robot.interfaces import DeviceError, Robot, RobotState, check_array, check_quat
from protege.robot.trajectory import Trajectory, joint_min_duration, lerp, pose_lerp, pose_min_duration

# one row of the state ring: t_host, q (6), qd (6), tcp position (3), quaternion xyzw (4), controller timestamp
_ROW = 21
_OUTPUTS = ["timestamp", "actual_q", "actual_qd", "actual_TCP_pose", "target_q", "target_TCP_pose", "robot_mode", "safety_mode", "runtime_state",
            "safety_status_bits", "robot_status_bits"]
STARTING, RUNNING, FAILED, CLOSED = 0, 1, 2, 3
_CYCLES = 4096


@dataclass
class URSettings:
    """The ``robot=ur5e`` config's arm settings.

    Attributes:
        host: the controller's IP address (Settings > System > Network on the teach pendant).
        frequency: servo and state rate Hz: 500 (e-Series) or 125 (CB3).
        lookahead_time: s, 0.03-0.2: servoL / servoJ's smoothing (longer: smoother, more lag).
        gain: 100-2000: servoL / servoJ's proportional gain (higher: stiffer tracking).
        max_tcp_speed: m/s, max_tcp_angular_speed: rad/s, max_joint_speed: rad/s: the
            interpolator's limits (a target needing more is reached later); the safety filter's
            limits above them are lower.
        tcp_offset: [x, y, z, rx, ry, rz] m / rad, the TCP in the flange frame (``setTcp``).
        payload_mass: kg; payload_cog: (3,) m in the flange frame (``setPayload``).
        connect_timeout_s: s for the controller to accept the connection and run the control script.
        state_timeout_s: s without a new state sample before the arm counts as lost.
        watchdog_hz: the controller stops the program when the servo loop is silent for 1 / this s.
        history_s: s of state history kept for :meth:`URRobot.states`.
    """

    host: str = "192.168.1.10"
    frequency: float = 500.0
    lookahead_time: float = 0.1
    gain: float = 300.0
    max_tcp_speed: float = 0.5
    max_tcp_angular_speed: float = 2.0
    max_joint_speed: float = 1.5
    tcp_offset: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    payload_mass: float = 0.0
    payload_cog: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    connect_timeout_s: float = 15.0
    state_timeout_s: float = 0.1
    watchdog_hz: float = 10.0
    history_s: float = 2.0

    def __post_init__(self):
        checks = {"frequency": 0 < self.frequency <= 500, "lookahead_time": 0.03 <= self.lookahead_time <= 0.2,
                  "gain": 100 <= self.gain <= 2000, "max_tcp_speed": 0 < self.max_tcp_speed <= 3.0,
                  "max_tcp_angular_speed": 0 < self.max_tcp_angular_speed <= 6.3,
                  "max_joint_speed": 0 < self.max_joint_speed <= 3.2, "connect_timeout_s": self.connect_timeout_s > 0,
                  "state_timeout_s": self.state_timeout_s > 0, "watchdog_hz": self.watchdog_hz > 0,
                  "payload_mass": 0 <= self.payload_mass <= 20, "history_s": self.history_s > 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"robot {name}={getattr(self, name)} is out of range")
        self.tcp_offset = [float(x) for x in check_array("tcp_offset", self.tcp_offset, (6,))]
        self.payload_cog = [float(x) for x in check_array("payload_cog", self.payload_cog, (3,))]


def ur_pose_to_quat(pose) -> tuple[np.ndarray, np.ndarray]:
    """UR pose [x, y, z, rx, ry, rz] -> position (3,) m, quaternion (4,) (x, y, z, w)."""
    pose = np.asarray(pose, float)
    return pose[:3].copy(), Rotation.from_rotvec(pose[3:6]).as_quat()


def quat_to_ur_pose(position, quat) -> list[float]:
    """Position (3,) m + quaternion (x, y, z, w) -> UR pose [x, y, z, rx, ry, rz] (rotation vector rad)."""
    return [*map(float, position), *map(float, Rotation.from_quat(quat).as_rotvec())]


class URRobot(Robot):
    """A UR arm driven by a servo process over ``ur-rtde`` (see the module docstring).

    Args:
        settings: :class:`URSettings` (or its fields as keyword arguments).

    Raises:
        ImportError: ``ur-rtde`` is not installed (``pip install 'protege[ur]'``).
        ValueError: settings out of range.
        DeviceError: no controller at ``host``, the control script did not start, or the arm
            is in a protective or emergency stop (with the controller's reason).
    """

    def __init__(self, settings: URSettings | None = None, **kwargs):
        try:
            import rtde_control  # noqa: F401
        except ImportError as e:
            raise ImportError("robot=ur5e needs the ur-rtde package: pip install 'protege[ur]'") from e
        self.settings = settings or URSettings(**kwargs)
        self.clock = HostClock()
        self._closed = False
        ctx = mp.get_context("spawn")  # the parent may run threads (cameras, inference): never fork them
        self._n = max(4, int(self.settings.history_s * self.settings.frequency))
        self._ring = ctx.Array("d", self._n * _ROW, lock=False)
        self._count = ctx.Value("q", 0, lock=False)
        self._lock = ctx.Lock()
        self._cycles = ctx.Array("d", _CYCLES, lock=False)  # start times of the newest servo cycles
        self._ncycles = ctx.Value("q", 0, lock=False)
        self._status = ctx.Value("i", STARTING)
        self._errors = ctx.Queue()
        self._commands = ctx.Queue()
        self._error: str | None = None
        self._proc = ctx.Process(target=_servo_process, name="ur-servo", daemon=True,
                                 args=(asdict(self.settings), self._commands, self._errors, self._ring, self._count,
                                       self._lock, self._status, self._n, os.getpid(), self._cycles, self._ncycles))
        self._proc.start()
        deadline = time.monotonic() + self.settings.connect_timeout_s + 5.0  # + the child's start-up
        while self._status.value == STARTING and time.monotonic() < deadline and self._proc.is_alive():
            time.sleep(0.01)
        # a constructed robot has a state: wait for the servo process's first sample too
        while self._status.value == RUNNING and self._count.value == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        if self._status.value != RUNNING or self._count.value == 0:
            reason = self._take_error() or (f"no answer within {self.settings.connect_timeout_s:g} s"
                                            if self._proc.is_alive() else "the servo process died")
            self.close()  # servoStop and stopScript if the script runs
            raise DeviceError(f"cannot drive the UR at {self.settings.host}: {reason}")

    # -- process plumbing ------------------------------------------------------------------------
    def _take_error(self) -> str | None:
        try:
            self._error = self._errors.get(timeout=0.5)
        except queue.Empty:
            pass
        return self._error

    def _check(self) -> None:
        if self._closed:
            raise DeviceError("URRobot is closed")
        if self._status.value != RUNNING or not self._proc.is_alive():
            reason = self._error or self._take_error() or "the servo process died"
            raise DeviceError(f"UR at {self.settings.host}: {reason}")

    def _kill(self) -> None:
        self._proc.join(timeout=5.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=2.0)

    def _rows(self, n: int) -> np.ndarray:
        with self._lock:
            count = self._count.value
            k = min(max(n, 0), count, self._n)
            ring = np.frombuffer(self._ring, dtype=np.float64).reshape(self._n, _ROW)
            idx = [(count - k + i) % self._n for i in range(k)]
            return ring[idx].copy()

    @staticmethod
    def _to_state(row: np.ndarray) -> RobotState:
        return RobotState(row[1:7].copy(), row[7:13].copy(), row[13:16].copy(), row[16:20].copy(), float(row[0]))

    # -- Robot -------------------------------------------------------------------------------
    def state(self) -> RobotState:
        """The newest sample.

        Raises:
            DeviceError: closed, faulted (protective / emergency stop, script stopped, lost
                connection), or no new sample for ``state_timeout_s``.
        """
        self._check()
        rows = self._rows(1)
        if not len(rows):
            raise DeviceError(f"UR at {self.settings.host}: no state yet")
        age = time.monotonic() - rows[0][0]
        if age > self.settings.state_timeout_s:
            raise DeviceError(f"UR at {self.settings.host}: no state for {age * 1e3:.0f} ms "
                              f"(state_timeout_s {self.settings.state_timeout_s:g})")
        return self._to_state(rows[0])

    def states(self, n: int) -> list[RobotState]:
        self._check()
        return [self._to_state(r) for r in self._rows(n)]

    def servo_tcp(self, position, quat, t: float) -> None:
        position = check_array("position", position, (3,))
        quat = check_quat("quat", quat)
        t = float(check_array("t", t, ()))
        self._check()
        self._commands.put(("pose", t, np.concatenate([position, quat])))

    def servo_joints(self, q, t: float) -> None:
        q = check_array("q", q, (6,))
        t = float(check_array("t", t, ()))
        self._check()
        self._commands.put(("joints", t, q))

    def forward_kinematics(self, q) -> tuple[np.ndarray, np.ndarray]:
        """The nominal UR5e's kinematics (:mod:`protege.robot.kinematics`) with ``tcp_offset``."""
        from .kinematics import ur_tcp_pose

        return ur_tcp_pose(check_array("q", q, (6,)), self.settings.tcp_offset)

    def servo_cycle_times(self) -> np.ndarray:
        """Host times s at which the newest servo cycles (up to 4000) started, oldest first:
        ``np.diff`` of it is the set-point stream's period (benchmarks/hardware_rt.py)."""
        n = self._ncycles.value
        k = min(n, _CYCLES - 96)  # the oldest slots may be overwritten by the servo process while we read
        times = np.frombuffer(self._cycles, dtype=np.float64)
        return times[[(n - k + i) % _CYCLES for i in range(k)]].copy()

    def stop(self) -> None:
        if not self._closed and self._proc.is_alive():
            self._commands.put(("stop",))

    def close(self) -> None:
        """servoStop and stopScript (in the servo process), then end it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._proc.is_alive():
            self._commands.put(("close",))
        self._kill()


def _servo_process(settings: dict, commands, errors, ring, count, lock, status, n: int, parent_pid: int, cycles,
                   ncycles) -> None:
    """The servo loop (see the module docstring); runs in its own process."""
    import rtde_control
    import rtde_receive

    s = URSettings(**settings)
    dt = 1.0 / s.frequency
    rtde_c = rtde_r = None

    def fail(msg: str) -> None:
        errors.put(msg)
        status.value = FAILED

    try:
        try:
            rtde_r = rtde_receive.RTDEReceiveInterface(s.host, s.frequency, _OUTPUTS)
            if rtde_r.isProtectiveStopped() or rtde_r.isEmergencyStopped():
                raise RuntimeError(_safety_reason(rtde_r) + "; clear it on the teach pendant first")
            rtde_c = rtde_control.RTDEControlInterface(s.host, s.frequency)
        except RuntimeError as e:
            fail(f"{e}")
            return
        if not rtde_c.isProgramRunning():
            fail("the control script is not running (is the arm in remote control, powered and brakes released?)")
            return
        rtde_c.setTcp(s.tcp_offset)
        if s.payload_mass > 0:
            rtde_c.setPayload(s.payload_mass, s.payload_cog)
        # the controller's clock on the host's: smallest host - controller difference of the first samples
        offset, last_ts, t_end = np.inf, None, time.monotonic() + 0.2
        while time.monotonic() < t_end:
            ts = rtde_r.getTimestamp()
            if ts != last_ts:
                offset, last_ts = min(offset, time.monotonic() - ts), ts
            time.sleep(dt / 4)
        if not np.isfinite(offset):
            fail("the controller sends no state")
            return
        ring_np = np.frombuffer(ring, dtype=np.float64).reshape(n, _ROW)
        pos, quat = ur_pose_to_quat(rtde_r.getActualTCPPose())
        now = time.monotonic()
        mode = "pose"
        pose_traj = Trajectory(np.concatenate([pos, quat]), now, pose_lerp,
                               pose_min_duration(s.max_tcp_speed, s.max_tcp_angular_speed))
        joint_traj = None
        last_ts, last_new = None, now
        rtde_c.setWatchdog(s.watchdog_hz)  # from now on every servo set-point kicks it
        status.value = RUNNING
        while True:
            t_cycle = rtde_c.initPeriod()
            now = time.monotonic()
            cycles[ncycles.value % _CYCLES] = now
            ncycles.value += 1
            stop = False
            while True:
                try:
                    cmd = commands.get_nowait()
                except queue.Empty:
                    break
                if cmd[0] == "close":
                    stop = True
                elif cmd[0] == "pose":
                    if mode != "pose":
                        p, q = ur_pose_to_quat(rtde_r.getTargetTCPPose())
                        pose_traj = Trajectory(np.concatenate([p, q]), now, pose_lerp,
                                               pose_min_duration(s.max_tcp_speed, s.max_tcp_angular_speed))
                        mode = "pose"
                    v = cmd[2]
                    cur = pose_traj(now)
                    if np.dot(cur[3:], v[3:]) < 0:
                        v = np.concatenate([v[:3], -v[3:]])
                    pose_traj.add(now, cmd[1], v)
                elif cmd[0] == "joints":
                    if mode != "joints":
                        joint_traj = Trajectory(np.asarray(rtde_r.getTargetQ()), now, lerp,
                                                joint_min_duration(s.max_joint_speed))
                        mode = "joints"
                    joint_traj.add(now, cmd[1], cmd[2])
                elif cmd[0] == "stop":
                    (pose_traj if mode == "pose" else joint_traj).hold(now)
            if stop or os.getppid() != parent_pid:
                break
            # state
            ts = rtde_r.getTimestamp()
            if ts != last_ts:
                last_ts, last_new = ts, now
                p, q = ur_pose_to_quat(rtde_r.getActualTCPPose())
                row = np.concatenate([[ts + offset], rtde_r.getActualQ(), rtde_r.getActualQd(), p, q, [ts]])
                with lock:
                    ring_np[count.value % n] = row
                    count.value += 1
            elif now - last_new > s.state_timeout_s:
                fail(f"the controller stopped answering (no state for {(now - last_new) * 1e3:.0f} ms)")
                break
            if not rtde_r.isConnected():
                fail("lost the connection to the controller")
                break
            if rtde_r.isProtectiveStopped() or rtde_r.isEmergencyStopped():
                fail(_safety_reason(rtde_r))
                break
            if rtde_r.getRuntimeState() != 2:
                fail("the control script stopped (RTDE watchdog, a dashboard or pendant stop, or another program)")
                break
            # set-point
            if mode == "pose":
                p = pose_traj(now)
                ok = rtde_c.servoL(quat_to_ur_pose(p[:3], p[3:]), 0.5, 0.5, dt, s.lookahead_time, s.gain)
            else:
                ok = rtde_c.servoJ(list(map(float, joint_traj(now))), 0.5, 0.5, dt, s.lookahead_time, s.gain)
            if not ok:
                # a refusal can arrive before the state packet that says why (a protective stop): give
                # the receive interface a few controller cycles to catch up before naming the reason
                t_why = time.monotonic() + 0.1
                stopped = rtde_r.isProtectiveStopped() or rtde_r.isEmergencyStopped()
                while not stopped and time.monotonic() < t_why:
                    time.sleep(0.002)
                    stopped = rtde_r.isProtectiveStopped() or rtde_r.isEmergencyStopped()
                fail(_safety_reason(rtde_r) if stopped else "the controller refused a servo set-point")
                break
            rtde_c.waitPeriod(t_cycle)
    except Exception as e:  # noqa: BLE001 (the parent must hear of every failure)
        fail(f"servo loop error: {type(e).__name__}: {e}")
    finally:
        if status.value == RUNNING:
            status.value = CLOSED
        if rtde_c is not None:
            try:
                if rtde_c.isConnected():
                    rtde_c.servoStop()
                    rtde_c.stopScript()
                rtde_c.disconnect()
            except Exception:  # noqa: BLE001 (best effort; the controller's watchdog stops the arm anyway)
                pass
        if rtde_r is not None:
            try:
                rtde_r.disconnect()
            except Exception:  # noqa: BLE001
                pass


def _safety_reason(rtde_r) -> str:
    if rtde_r.isEmergencyStopped():
        return "emergency stop (release the e-stop, then power on and release the brakes)"
    if rtde_r.isProtectiveStopped():
        return ("protective stop (find out why, move the arm clear, then unlock it on the teach pendant "
                "or with the dashboard's 'unlock protective stop')")
    return f"safety mode {rtde_r.getSafetyMode()}"
