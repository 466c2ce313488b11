"""``protege-ur-sim``: a Universal Robots controller stand-in over the MuJoCo UR5e + 2F-85.

It speaks, on loopback, the ports the unmodified ``ur-rtde`` client and the Robotiq URCap use:

* **29999 dashboard server**: text lines (``PolyscopeVersion``, ``get serial number``,
  ``is in remote control``, ``stop``, ``play``, ``robotmode``, ``safetystatus``,
  ``unlock protective stop``, ``close safety popup``, ``power on``, ``brake release``, ``quit``...).
* **30004 RTDE** (protocol version 2): output recipes streamed at up to 500 Hz, input recipes
  written into the controller's registers (see :mod:`protege.sim.rtde_protocol`).
* **30003 script port**: a URScript program sent here starts running (``ur-rtde`` uploads its
  ``rtde_control`` script); the stand-in then executes that script's register commands itself:
  the handshake on ``output_int_register_0`` (1 ready, 2 done), and MOVEJ 1, MOVEJ_IK 2, MOVEL 3,
  MOVEL_FK 4, SPEEDJ 9, SPEEDL 10, SERVOJ 11, SPEED_STOP 15, SERVO_STOP 16, SET_PAYLOAD 17,
  SERVOL 24, SET_TCP 29, STOPL 33, STOPJ 34, SET_WATCHDOG 35, WATCHDOG 99, STOP_SCRIPT 255.
* **63352 Robotiq URCap socket** (:mod:`protege.sim.robotiq_standin`).

Protocol facts (ports, framing, recipes, the register handshake, command ids, the client's
timeouts) are those of ``shared/hardware/ur_rtde_protocol.md``, gathered from ur_rtde 1.6's
sources and Universal Robots' RTDE guide.

The simulated controller, modelled on an e-Series at 500 Hz:

* Time: ``timestamp`` counts seconds since the stand-in started, kept on the wall clock (the
  simulation catches up when a tick runs late).
* Poses are the TCP in the base frame as ``[x, y, z, rx, ry, rz]`` (m, rotation vector rad), the
  TCP being the flange plus the offset set by ``setTcp`` (none at start, as on a fresh controller).
* servoJ / servoL: the target is reached ``lookahead_time`` s after it arrives, linearly (the
  real controller's lookahead filter is proprietary; this gives the same order of lag).
  servoL solves the inverse kinematics on the controller side (MuJoCo's differential IK).
* moveJ / moveL: linear in joint / Cartesian space over the trapezoidal profile's duration.
* speedJ / speedL: the commanded velocity is held until a stop or a new command (no ramp).
* A **protective stop** happens when a joint comes within 0.01 rad of its limit, or the arm or
  gripper pushes on the table with more than ``table_force_limit`` N; the arm holds, the program
  stops, and ``unlock protective stop`` on the dashboard clears it (the script must be sent
  again, as on the real arm). The RTDE watchdog (SET_WATCHDOG) stops the program when its
  register is not written for longer than its period.
* Operator input on stdin, one word per line, for tests and rehearsals: ``pstop``, ``estop``
  (an emergency stop: power off, program stopped), ``release`` (clear either), ``freeze`` /
  ``thaw`` (stop / resume answering on every socket, like a hung controller), ``drop`` (close
  every connection), ``quit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import queue
import re
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from protege.robot.trajectory import quat_angle
from protege.sim import rtde_protocol as rp
from protege.sim.robotiq_standin import RobotiqStandIn

PORTS = {"dashboard": 29999, "rtde": 30004, "script": 30003, "robotiq": 63352}
CONTROLLER_VERSION = (5, 11, 1, 108318)
POLYSCOPE_VERSION = "URSoftware 5.11.1.108318 (Mar 22 2021)"
SERIAL_NUMBER = "20235500001"

# robot_mode, safety_mode values and status bits (RTDE guide)
ROBOT_MODE_POWER_OFF, ROBOT_MODE_RUNNING = 3, 7
SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP, SAFETY_ROBOT_EMERGENCY_STOP = 1, 3, 7
RUNTIME_STOPPED, RUNTIME_PLAYING = 1, 2
STATUS_POWER_ON, STATUS_PROGRAM_RUNNING = 1, 2
SAFETY_BIT_NORMAL, SAFETY_BIT_PROTECTIVE, SAFETY_BIT_ROBOT_ESTOP, SAFETY_BIT_ESTOP, SAFETY_BIT_STOPPED = 0, 2, 6, 7, 10

RT_COMMANDS = {6, 9, 10, 11, 24, 25, 26, 27, 38, 99}  # processed and answered "ready" at once
MOVEJ, MOVEJ_IK, MOVEL, MOVEL_FK = 1, 2, 3, 4
SPEEDJ, SPEEDL, SERVOJ, SPEED_STOP, SERVO_STOP, SET_PAYLOAD = 9, 10, 11, 15, 16, 17
SERVOL, SET_TCP, STOPL, STOPJ, SET_WATCHDOG, WATCHDOG, STOP_SCRIPT = 24, 29, 33, 34, 35, 99, 255


def rotvec_to_matrix(rotvec) -> np.ndarray:
    """(3, 3) rotation matrix of a rotation vector (3,) rad (MuJoCo's routines: scipy's cost ~0.1 ms a call)."""
    rotvec = np.asarray(rotvec, float)
    angle = float(np.linalg.norm(rotvec))
    quat, mat = np.array([1.0, 0.0, 0.0, 0.0]), np.empty(9)
    if angle > 1e-12:
        mujoco.mju_axisAngle2Quat(quat, rotvec / angle, angle)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) rad, angle in [0, pi], of a (3, 3) rotation matrix."""
    quat, vel = np.empty(4), np.empty(3)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(R, dtype=float).ravel())
    if quat[0] < 0:
        quat = -quat
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


def pose_to_matrix(pose) -> np.ndarray:
    """(4, 4) homogeneous transform of a UR pose [x, y, z, rx, ry, rz] (m, rotation vector rad)."""
    T = np.eye(4)
    T[:3, :3] = rotvec_to_matrix(pose[3:6])
    T[:3, 3] = pose[:3]
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    """UR pose (6,) [x, y, z, rx, ry, rz] of a (4, 4) transform."""
    return np.concatenate([T[:3, 3], matrix_to_rotvec(T[:3, :3])])


def trapezoid_duration(distance: float, speed: float, accel: float) -> float:
    """Time s to cover ``distance`` from rest to rest at top ``speed`` and ``accel`` (trapezoidal profile)."""
    speed, accel = max(speed, 1e-6), max(accel, 1e-6)
    if distance > speed * speed / accel:
        return distance / speed + speed / accel
    return 2.0 * np.sqrt(distance / accel)


# dashboard commands the stand-in only acknowledges, with the controller's replies
_DASHBOARD_ACKS = {"close safety popup": "closing safety popup", "close popup": "closing popup",
                   "power on": "Powering on", "power off": "Powering off", "brake release": "Brake releasing",
                   "restart safety": "Restarting safety"}


@dataclasses.dataclass
class _Conn:
    sock: socket.socket
    kind: str
    rbuf: bytearray = dataclasses.field(default_factory=bytearray)
    out_names: list = dataclasses.field(default_factory=list)
    out_struct: struct.Struct | None = None
    out_every: int = 1
    started: bool = False
    inputs: dict = dataclasses.field(default_factory=dict)  # recipe id -> (names, struct)
    script: bytearray = dataclasses.field(default_factory=bytearray)


class URControllerSim:
    """The stand-in controller: sockets, the emulated control script and the simulated arm.

    Args:
        host: address to listen on (any loopback address: tests give each run its own, 127.0.0.x).
        task: the simulated task's scene (``lift``, ``pick_place``, ``stack``).
        seed: seed of the task's object placement.
        ports: service -> port (default :data:`PORTS`).
        rate_hz: servo rate (500 e-Series, 125 CB3); RTDE frequency -1 means this rate.
        table_force_limit: N of contact force between the robot and the table that trips a protective stop.
        log: where status lines go.

    Raises:
        OSError: a port is taken (another controller, or a stand-in still running).
    """

    def __init__(self, host: str = "127.0.0.1", task: str = "lift", seed: int = 0, ports: dict | None = None,
                 rate_hz: float = 500.0, table_force_limit: float = 150.0, menagerie=None,
                 log: Callable[[str], None] = print):
        from protege.sim.env import SimBackend  # MuJoCo scene + robot, lockstep: this loop paces it

        self.log = log
        self.backend = SimBackend(task, cameras=(), clock="lockstep", menagerie=menagerie)
        self.backend.reset(seed)
        self.robot, self.scene = self.backend.robot, self.backend.scene
        self.model, self.data = self.scene.model, self.scene.data
        if not 0 < rate_hz <= 1.0 / self.model.opt.timestep:
            raise ValueError(f"rate_hz must be in (0, {1.0 / self.model.opt.timestep:g}], got {rate_hz}")
        self.dt = 1.0 / float(rate_hz)  # a servo tick: one or more physics steps
        self.rate_hz = float(rate_hz)
        self.table_force_limit = float(table_force_limit)
        self.gripper = RobotiqStandIn(self.robot)
        m = self.model
        flange = m.site("attachment_site").id
        self._flange_site = flange
        self._table_geom = m.geom("table").id
        arm_root = m.body("shoulder_link").id
        self._robot_geoms = {g for g in range(m.ngeom)
                             if m.geom_bodyid[g] >= arm_root and m.body(m.geom_bodyid[g]).name not in self.scene.objects}
        # fixed transform flange -> the simulated TCP site (the 2F-85's pinch point)
        self._flange_to_site = np.linalg.inv(self._site_T(flange)) @ self._site_T(self.scene.tcp_site)
        self._limits = self.robot.joint_limits
        # controller state
        self.tcp_offset = np.zeros(6)
        self.payload = (0.0, np.zeros(3))
        self.in_int, self.in_double = np.zeros(48, np.int64), np.zeros(48)
        self.out_int, self.out_double = np.zeros(48, np.int64), np.zeros(48)
        self.in_bits = 0
        self.running = False
        self.protective_stop = self.estop = False
        self.reg_offset = 0
        self._busy: Callable[[], bool] | None = None
        self._executing = False
        self._speed: tuple[str, np.ndarray] | None = None
        self._watchdog_period: float | None = None
        self._watchdog_last = 0.0
        self._in_owner: dict[str, _Conn] = {}
        self._prev_tcp = self._tcp_T(self.data.site_xmat, self.data.site_xpos)
        self._prev_q_cmd = self.robot.commanded_joint_positions
        self.frozen = False
        self.ticks = self._steps = 0
        self.commands = queue.Queue()
        self._closed = False
        self.sel = selectors.DefaultSelector()
        self._listeners = []
        ports = {**PORTS, **(ports or {})}
        for kind, port in ports.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                self.close()
                raise OSError(e.errno, f"cannot listen on {host}:{port} ({kind}): {e.strerror}") from e
            s.listen(8)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("listen", kind))
            self._listeners.append(s)
        self.host, self.ports = host, ports

    # -- kinematics -----------------------------------------------------------------------------
    def _site_T(self, site: int) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.data.site_xmat[site].reshape(3, 3)
        T[:3, 3] = self.data.site_xpos[site]
        return T

    def _tcp_T(self, xmat, xpos) -> np.ndarray:
        """Controller TCP (flange + tcp_offset) from the sites' arrays of an MjData."""
        F = np.eye(4)
        F[:3, :3] = xmat[self._flange_site].reshape(3, 3)
        F[:3, 3] = xpos[self._flange_site]
        return F @ pose_to_matrix(self.tcp_offset)

    def _target_tcp_T(self) -> np.ndarray:
        k = self.robot._kin  # the robot's scratch MjData, posed at the commanded joints
        k.qpos[self.scene.arm_qpos] = self.robot.commanded_joint_positions
        mujoco.mj_kinematics(self.model, k)
        return self._tcp_T(k.site_xmat, k.site_xpos)

    def _site_target(self, tcp_pose) -> tuple[np.ndarray, np.ndarray]:
        """Simulated TCP-site position (3,) and quaternion (x, y, z, w) for a controller TCP pose."""
        T = pose_to_matrix(tcp_pose) @ np.linalg.inv(pose_to_matrix(self.tcp_offset)) @ self._flange_to_site
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, np.ascontiguousarray(T[:3, :3]).ravel())
        return T[:3, 3], quat[[1, 2, 3, 0]]

    # -- the loop -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run the 500 Hz loop until :meth:`close` (or ``quit`` on stdin)."""
        t0 = time.monotonic()
        next_t = t0
        while not self._closed:
            self._poll()
            self._operator()
            if self._closed:
                break
            due = time.monotonic() - t0
            steps = 0
            while self.robot.now() + 0.5 * self.dt < due and steps < 25:
                self._script_tick()
                self._motion_tick()
                self.robot.advance(self.dt)
                self.gripper.tick()
                self._safety_tick()
                steps += 1
            if steps:
                self.ticks += 1
                self._steps = steps
                self._publish()
            next_t += self.dt
            now = time.monotonic()
            if next_t < now - 0.05:
                next_t = now  # a long stall: do not burst
            time.sleep(max(0.0, next_t - now))

    def close(self) -> None:
        """Close every socket and the simulation (idempotent)."""
        self._closed = True
        for key in list(self.sel.get_map().values()):
            try:
                key.fileobj.close()
            except OSError:
                pass
        self.sel.close()
        self.backend.close()

    # -- operator -----------------------------------------------------------------------------
    def _operator(self) -> None:
        while True:
            try:
                word = self.commands.get_nowait().strip().lower()
            except queue.Empty:
                return
            if word == "pstop":
                self._trip_protective_stop("operator")
            elif word == "estop":
                self.estop = True
                self._stop_program("emergency stop")
                self.log("emergency stop")
            elif word == "release":
                self.estop = self.protective_stop = False
                self.log("safety released")
            elif word == "freeze":
                self.frozen = True
                self.log("frozen: not answering")
            elif word == "thaw":
                self.frozen = False
                self.log("answering again")
            elif word == "drop":
                self._drop_clients()
                self.log("dropped every connection")
            elif word == "quit":
                self._closed = True
            elif word:
                self.log(f"unknown operator command {word!r} (pstop, estop, release, freeze, thaw, drop, quit)")

    def _drop_clients(self) -> None:
        for key in list(self.sel.get_map().values()):
            if key.data[0] != "listen":
                self._close_conn(key.data[1])

    # -- sockets ------------------------------------------------------------------------------
    def _poll(self) -> None:
        if self.frozen:
            return
        for key, _ in self.sel.select(timeout=0):
            role, obj = key.data
            if role == "listen":
                try:
                    sock, _ = key.fileobj.accept()
                except OSError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Conn(sock, obj)
                self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
                if obj == "dashboard":
                    self._send(conn, b"Connected: Universal Robots Dashboard Server\n")
                continue
            conn = obj
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._close_conn(conn)
                continue
            conn.rbuf += data
            try:
                getattr(self, "_on_" + conn.kind)(conn)
            except (ValueError, struct.error) as e:
                self.log(f"{conn.kind}: closing a connection that sent garbage ({e})")
                self._close_conn(conn)

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)
        except (BlockingIOError, OSError):
            self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        for name in [n for n, c in self._in_owner.items() if c is conn]:
            del self._in_owner[name]
        if conn.kind == "script" and conn.script:
            self._on_script_text(conn.script.decode("utf-8", "replace"))

    # -- dashboard ----------------------------------------------------------------------------
    @staticmethod
    def _lines(conn: _Conn):
        """The complete lines received on a text port, taken off its buffer."""
        while b"\n" in conn.rbuf:
            line, _, rest = bytes(conn.rbuf).partition(b"\n")
            conn.rbuf[:] = rest
            yield line.decode("utf-8", "replace").strip()

    def _on_dashboard(self, conn: _Conn) -> None:
        for line in self._lines(conn):
            reply = self._dashboard(line)
            if reply is None:
                self._send(conn, b"Disconnected\n")
                self._close_conn(conn)
                return
            self._send(conn, (reply + "\n").encode())

    def _dashboard(self, cmd: str) -> str | None:
        c = cmd.lower()
        if c == "quit":
            return None
        if c == "polyscopeversion":
            return POLYSCOPE_VERSION
        if c == "get serial number":
            return SERIAL_NUMBER
        if c == "get robot model":
            return "UR5"
        if c == "is in remote control":
            return "true"
        if c == "stop":
            self._stop_program("dashboard stop")
            return "Stopped"
        if c == "pause":
            self._stop_program("dashboard pause")
            return "Pausing program"
        if c == "play":
            return "Failed to execute: play"  # the stand-in runs only programs sent to port 30003
        if c == "running":
            return f"Program running: {str(self.running).lower()}"
        if c == "programstate":
            return "PLAYING rtde_control" if self.running else "STOPPED <unnamed>"
        if c == "robotmode":
            return "Robotmode: " + ("POWER_OFF" if self.estop else "RUNNING")
        if c in ("safetystatus", "safetymode"):
            name = "ROBOT_EMERGENCY_STOP" if self.estop else "PROTECTIVE_STOP" if self.protective_stop else "NORMAL"
            return ("Safetystatus: " if c == "safetystatus" else "Safetymode: ") + name
        if c == "unlock protective stop":
            if not self.protective_stop:
                return "Cannot unlock protective stop until 5s after occurrence. Always inspect cause of protective stop before unlocking"
            self.protective_stop = False
            self.log("protective stop unlocked")
            return "Protective stop releasing"
        return _DASHBOARD_ACKS.get(c, f"could not understand: '{cmd}'")

    # -- Robotiq URCap socket ---------------------------------------------------------------------
    def _on_robotiq(self, conn: _Conn) -> None:
        for line in self._lines(conn):
            self._send(conn, self.gripper.handle(line).encode())  # the URCap's replies end with nothing

    # -- script port ----------------------------------------------------------------------------
    def _on_script(self, conn: _Conn) -> None:
        conn.script += conn.rbuf
        conn.rbuf.clear()
        text = conn.script.decode("utf-8", "replace")
        lines = [ln for ln in text.rstrip().splitlines() if ln.strip()]
        if lines and lines[-1].strip() == "end" and not lines[-1].startswith((" ", "\t")) and lines[0].startswith("def "):
            conn.script.clear()
            self._on_script_text(text)

    def _on_script_text(self, text: str) -> None:
        if self.protective_stop or self.estop:
            self.log("script refused: the robot is in a " + ("emergency" if self.estop else "protective") + " stop")
            return
        m = re.search(r"reg_offset_int\s*=\s*(\d+)", text)
        self.reg_offset = int(m.group(1)) if m else 0
        self._stop_motion()
        self._busy, self._executing, self._watchdog_period = None, False, None
        self.out_int[self.reg_offset] = 1  # signal_ready()
        self.running = True
        self.log(f"program started ({len(text)} bytes of URScript)")

    # -- RTDE ---------------------------------------------------------------------------------
    def _on_rtde(self, conn: _Conn) -> None:
        for kind, payload in rp.split_packages(conn.rbuf):
            if kind == rp.REQUEST_PROTOCOL_VERSION:
                (version,) = struct.unpack(">H", payload[:2])
                self._send(conn, rp.package(kind, struct.pack(">B", int(version in (1, 2)))))
            elif kind == rp.GET_URCONTROL_VERSION:
                self._send(conn, rp.package(kind, struct.pack(">IIII", *CONTROLLER_VERSION)))
            elif kind == rp.CONTROL_PACKAGE_SETUP_OUTPUTS:
                (freq,) = struct.unpack(">d", payload[:8])
                names = rp.names_of(payload[8:])
                types = [rp.output_type(n) or "NOT_FOUND" for n in names]
                if "NOT_FOUND" in types:
                    self.log(f"RTDE: unknown outputs {[n for n, t in zip(names, types) if t == 'NOT_FOUND']}")
                else:
                    conn.out_names, conn.out_struct = names, rp.recipe_struct(types)
                    hz = self.rate_hz if freq <= 0 else min(float(freq), self.rate_hz)
                    conn.out_every = max(1, int(round(self.rate_hz / hz)))
                self._send(conn, rp.package(kind, struct.pack(">B", 1) + ",".join(types).encode()))
            elif kind == rp.CONTROL_PACKAGE_SETUP_INPUTS:
                names = rp.names_of(payload)
                types = [rp.input_type(n) or "NOT_FOUND" for n in names]
                if any(n in self._in_owner and self._in_owner[n] is not conn for n in names):
                    types = ["IN_USE" if n in self._in_owner and self._in_owner[n] is not conn else t
                             for n, t in zip(names, types)]
                recipe = len(conn.inputs) + 1
                if all(t in rp.FIELD_FORMATS for t in types):
                    conn.inputs[recipe] = (names, rp.recipe_struct(types))
                    for n in names:
                        self._in_owner[n] = conn
                else:
                    self.log(f"RTDE: input recipe refused: {dict(zip(names, types))}")
                    recipe = 0
                self._send(conn, rp.package(kind, struct.pack(">B", recipe) + ",".join(types).encode()))
            elif kind == rp.CONTROL_PACKAGE_START:
                conn.started = conn.out_struct is not None
                self._send(conn, rp.package(kind, struct.pack(">B", int(conn.started))))
            elif kind == rp.CONTROL_PACKAGE_PAUSE:
                conn.started = False
                self._send(conn, rp.package(kind, struct.pack(">B", 1)))
            elif kind == rp.DATA_PACKAGE:
                recipe = payload[0]
                if recipe in conn.inputs:
                    names, st = conn.inputs[recipe]
                    self._write_inputs(names, st.unpack(payload[1:1 + st.size]))
            # text messages from the client ('M') need no answer

    def _write_inputs(self, names: list[str], values) -> None:
        i = 0
        for name in names:
            n = 6 if rp.input_type(name) == "VECTOR6D" else 1
            v = values[i] if n == 1 else values[i:i + n]
            i += n
            m = rp.REGISTER.match(name)
            if m and m.group(2) == "int":
                self.in_int[int(m.group(3))] = v
                if int(m.group(3)) == self.reg_offset:
                    self._watchdog_last = self.robot.now()
            elif m and m.group(2) == "double":
                self.in_double[int(m.group(3))] = v
            elif name == "input_bit_registers0_to_31":
                self.in_bits = (self.in_bits & ~0xFFFFFFFF) | int(v)

    def _publish(self) -> None:
        if self.frozen:
            return
        conns = [k.data[1] for k in self.sel.get_map().values()
                 if k.data[0] == "conn" and k.data[1].kind == "rtde" and k.data[1].started]
        if not conns:
            return
        due = [c for c in conns if self.ticks % c.out_every == 0]
        if not due:
            return
        values = self._snapshot({n for c in due for n in c.out_names})
        for conn in due:
            flat = []
            for name in conn.out_names:
                v = values.get(name)
                if v is None:
                    v = self._register_value(name)
                if isinstance(v, (list, tuple, np.ndarray)):
                    flat.extend(v)
                else:
                    flat.append(v)
            self._send(conn, rp.package(rp.DATA_PACKAGE, b"\x01" + conn.out_struct.pack(*flat)))

    def _register_value(self, name: str):
        m = rp.REGISTER.match(name)
        if m:
            n = int(m.group(3))
            regs = {("output", "int"): self.out_int, ("output", "double"): self.out_double,
                    ("input", "int"): self.in_int, ("input", "double"): self.in_double}.get((m.group(1), m.group(2)))
            return False if regs is None else regs[n].item()
        fmt = rp.FIELD_FORMATS[rp.OUTPUTS[name]]
        if fmt[0].isdigit():
            return [0] * int(fmt[0])
        return 0.0 if fmt == "d" else 0

    def _snapshot(self, names: set[str]) -> dict:
        """Values of the outputs ``names`` asks for (registers excepted), now."""
        d, s = self.data, self.scene
        T = self._tcp_T(d.site_xmat, d.site_xpos)
        wall_dt = self.dt * max(1, self._steps)
        speed = np.zeros(6)
        if "actual_TCP_speed" in names or "target_TCP_speed" in names:
            dR = self._prev_tcp[:3, :3].T @ T[:3, :3]
            speed = np.concatenate([(T[:3, 3] - self._prev_tcp[:3, 3]) / wall_dt,
                                    self._prev_tcp[:3, :3] @ matrix_to_rotvec(dR) / wall_dt])
        self._prev_tcp = T
        q_cmd = self.robot.commanded_joint_positions
        qd_cmd = (q_cmd - self._prev_q_cmd) / wall_dt
        self._prev_q_cmd = q_cmd
        safety_bits = ((1 << SAFETY_BIT_NORMAL) if not (self.protective_stop or self.estop) else 0)
        if self.protective_stop:
            safety_bits |= (1 << SAFETY_BIT_PROTECTIVE) | (1 << SAFETY_BIT_STOPPED)
        if self.estop:
            safety_bits |= (1 << SAFETY_BIT_ROBOT_ESTOP) | (1 << SAFETY_BIT_ESTOP) | (1 << SAFETY_BIT_STOPPED)
        safety_mode = (SAFETY_ROBOT_EMERGENCY_STOP if self.estop else
                       SAFETY_PROTECTIVE_STOP if self.protective_stop else SAFETY_NORMAL)
        mass, cog = self.payload
        return {
            "timestamp": self.robot.now(),
            "actual_q": d.qpos[s.arm_qpos], "actual_qd": d.qvel[s.arm_dof], "target_q": q_cmd, "target_qd": qd_cmd,
            "actual_TCP_pose": matrix_to_pose(T),
            "target_TCP_pose": matrix_to_pose(self._target_tcp_T()) if "target_TCP_pose" in names else None,
            "actual_TCP_speed": speed, "target_TCP_speed": speed,
            "robot_mode": ROBOT_MODE_POWER_OFF if self.estop else ROBOT_MODE_RUNNING,
            "joint_mode": [253] * 6, "safety_mode": safety_mode, "safety_status": safety_mode,
            "runtime_state": RUNTIME_PLAYING if self.running else RUNTIME_STOPPED,
            "robot_status_bits": (0 if self.estop else STATUS_POWER_ON) | (STATUS_PROGRAM_RUNNING if self.running else 0),
            "safety_status_bits": safety_bits, "speed_scaling": 1.0, "target_speed_fraction": 1.0,
            "joint_temperatures": [30.0] * 6, "actual_main_voltage": 48.0, "actual_robot_voltage": 48.0,
            "payload": mass, "payload_cog": cog, "actual_execution_time": 0.1,
            "input_bit_registers0_to_31": self.in_bits & 0xFFFFFFFF,
        }

    # -- the emulated rtde_control script ---------------------------------------------------------
    def _stop_program(self, why: str) -> None:
        if self.running:
            self.log(f"program stopped: {why}")
        self.running = False
        self._busy, self._executing, self._watchdog_period = None, False, None
        self._stop_motion()

    def _stop_motion(self) -> None:
        self._speed = None
        self.robot.stop()

    def _trip_protective_stop(self, why: str) -> None:
        if not self.protective_stop:
            self.protective_stop = True
            self.log(f"protective stop: {why}")
        self._stop_program("protective stop")

    def _script_tick(self) -> None:
        if not self.running:
            return
        off = self.reg_offset
        now = self.robot.now()
        if self._watchdog_period and now - self._watchdog_last > self._watchdog_period:
            self._stop_program(f"RTDE watchdog: no command for {now - self._watchdog_last:.3f} s")
            return
        if self._busy is not None:
            if self._busy():
                self._busy = None
                self.out_int[off] = 2  # signal_done_with_cmd()
            return
        cmd = int(self.in_int[off])
        if cmd in RT_COMMANDS:
            self._process(cmd)
            self.out_int[off] = 1
        elif cmd == 0:
            self._executing = False
            self.out_int[off] = 1
        elif not self._executing:
            self._executing = True
            self.out_int[off] = 0
            if self._process(cmd) and self._busy is None:
                self.out_int[off] = 2

    def _process(self, cmd: int) -> bool:
        """Execute one command; False when it stopped the script."""
        off = self.reg_offset
        f = self.in_double[off:off + 12]
        now = self.robot.now()
        asynchronous = bool(self.in_int[off + 1])
        if cmd in (MOVEJ, MOVEL_FK):
            self._speed = None
            q = f[:6].copy()
            if cmd == MOVEL_FK:
                self._move_linear(self._pose_of_q(q), f[6], f[7], asynchronous)
            else:
                cur = self.robot.commanded_joint_positions
                t_end = now + trapezoid_duration(float(np.max(np.abs(q - cur))), f[6], f[7])
                self.robot.servo_joints(q, t_end)
                self._await(t_end, asynchronous)
        elif cmd in (MOVEL, MOVEJ_IK):
            self._speed = None
            self._move_linear(f[:6].copy(), f[6], f[7], asynchronous)
        elif cmd in (SERVOJ, SERVOL):
            self._speed = None
            lookahead = float(np.clip(f[9], 0.03, 0.2))
            if cmd == SERVOJ:
                self.robot.servo_joints(f[:6].copy(), now + lookahead)
            else:
                self.robot.servo_tcp(*self._site_target(f[:6]), now + lookahead)
        elif cmd in (SPEEDJ, SPEEDL):
            self._speed = ("joint" if cmd == SPEEDJ else "tcp", f[:6].copy())
        elif cmd in (SPEED_STOP, SERVO_STOP, STOPJ, STOPL):
            self._stop_motion()
        elif cmd == SET_PAYLOAD:
            self.payload = (float(f[0]), f[1:4].copy())
        elif cmd == SET_TCP:
            self.tcp_offset = f[:6].copy()
        elif cmd == SET_WATCHDOG:
            self._watchdog_period = 1.0 / f[0] if f[0] > 0 else None
            self._watchdog_last = now
        elif cmd == WATCHDOG:
            self._watchdog_last = now
        elif cmd == STOP_SCRIPT:
            self._stop_program("stopScript")
            return False
        else:
            self.log(f"command {cmd} is not emulated: ignored")
        return True

    def _pose_of_q(self, q) -> np.ndarray:
        k = self.robot._kin
        k.qpos[self.scene.arm_qpos] = q
        mujoco.mj_kinematics(self.model, k)
        return matrix_to_pose(self._tcp_T(k.site_xmat, k.site_xpos))

    def _move_linear(self, pose: np.ndarray, speed: float, accel: float, asynchronous: bool) -> None:
        cur = matrix_to_pose(self._target_tcp_T())
        dist = float(np.linalg.norm(pose[:3] - cur[:3]))
        ang = quat_angle(Rotation.from_rotvec(cur[3:]).as_quat(), Rotation.from_rotvec(pose[3:]).as_quat())
        now = self.robot.now()
        t_end = now + max(trapezoid_duration(dist, speed, accel), trapezoid_duration(ang, 1.0, 2.0))
        self.robot.servo_tcp(*self._site_target(pose), t_end)
        self._await(t_end, asynchronous)

    def _await(self, t_end: float, asynchronous: bool) -> None:
        if asynchronous:
            return

        def done() -> bool:
            return self.robot.now() >= t_end and float(np.max(np.abs(self.data.qvel[self.scene.arm_dof]))) < 0.02
        self._busy = done

    def _motion_tick(self) -> None:
        if self._speed is None:
            return
        mode, v = self._speed
        now, lead = self.robot.now(), 0.05
        if mode == "joint":
            self.robot.servo_joints(self.robot.commanded_joint_positions + v * lead, now + lead)
        else:
            T = self._target_tcp_T()
            T2 = np.eye(4)
            T2[:3, :3] = rotvec_to_matrix(v[3:] * lead) @ T[:3, :3]
            T2[:3, 3] = T[:3, 3] + v[:3] * lead
            self.robot.servo_tcp(*self._site_target(matrix_to_pose(T2)), now + lead)

    def _safety_tick(self) -> None:
        if self.protective_stop:
            return
        q = self.data.qpos[self.scene.arm_qpos]
        near = (q < self._limits[0] + 0.01) | (q > self._limits[1] - 0.01)
        if near.any():
            j = int(np.flatnonzero(near)[0])
            self._trip_protective_stop(f"joint {j} at {q[j]:.3f} rad, its limit")
            return
        d = self.data
        force = np.zeros(6)
        for i in range(d.ncon):
            c = d.contact[i]
            if self._table_geom in (c.geom1, c.geom2) and (c.geom1 in self._robot_geoms or c.geom2 in self._robot_geoms):
                mujoco.mj_contactForce(self.model, d, i, force)
                if force[0] > self.table_force_limit:
                    self._trip_protective_stop(f"the robot pushes on the table with {force[0]:.0f} N")
                    return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="protege-ur-sim",
        description="A Universal Robots controller stand-in on loopback: dashboard (29999), RTDE (30004), script "
                    "port (30003) and the Robotiq URCap socket (63352), over the MuJoCo UR5e + 2F-85 in real time. "
                    "The unmodified ur-rtde client connects to it; protege-deploy robot=ur5e robot.host=<host> drives it.",
        epilog="Operator commands on stdin, one per line: pstop, estop, release, freeze, thaw, drop, quit.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (any 127.0.0.x; default %(default)s)")
    ap.add_argument("--task", default="lift", help="simulated task scene: lift, pick_place, stack (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the objects' placement")
    ap.add_argument("--rate", type=float, default=500.0, help="servo rate Hz (500 e-Series; default %(default)s)")
    args = ap.parse_args(argv)
    try:
        sim = URControllerSim(args.host, args.task, args.seed, rate_hz=args.rate, log=lambda s: print(s, flush=True))
    except OSError as e:
        print(f"protege-ur-sim: {e}", file=sys.stderr)
        return 2

    def stdin_reader():
        for line in sys.stdin:  # at the end of stdin the stand-in keeps serving (stop it with a signal)
            sim.commands.put(line)

    signal.signal(signal.SIGTERM, lambda *_: sim.commands.put("quit"))
    threading.Thread(target=stdin_reader, daemon=True).start()
    print(f"protege-ur-sim: UR5e stand-in on {args.host} (dashboard {PORTS['dashboard']}, RTDE {PORTS['rtde']}, "
          f"script {PORTS['script']}, Robotiq {PORTS['robotiq']}), task {args.task}", flush=True)
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
