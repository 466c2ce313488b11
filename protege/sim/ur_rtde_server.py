"""The UR controller stand-in's RTDE server (port 30004): recipes, the output stream, the inputs.

Wire format in :mod:`protege.sim.rtde_protocol`. What the stand-in does:

* Output recipes stream on controller time: a recipe at ``f`` Hz is sent every ``round(rate / f)``
  servo ticks of the controller's clock, so its ``timestamp`` steps lie on the ``1 / f`` grid
  whatever the load on the machine (a loaded stand-in catches up and sends the late packages in a
  burst, as their stamps say). Frequency <= 0 means the servo rate; a loaded stand-in sends those
  recipes the newest tick's state once per pass of its loop (stamps on the 2 ms grid, some skipped).
* Inputs: the int / double / bit registers (the control script's), the standard, configurable and
  tool digital outputs with their masks (read back in ``actual_digital_output_bits``), the speed
  slider (mask bit 0, fraction 0-1: moves and speed commands slow down with it, as on the
  controller; servoJ / servoL targets keep their times), the standard analog outputs; the external
  wrench is accepted and unused (force mode is not emulated).
* A name the controller does not know is answered ``NOT_FOUND`` (and ``IN_USE`` for an input another
  client owns), and that recipe is refused.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

import numpy as np

from protege.sim import rtde_protocol as rp
from protege.sim.ur_arm import matrix_to_pose, matrix_to_rotvec
from protege.sim.ur_script import ControlScript

CONTROLLER_VERSION = (5, 11, 1, 108318)

# robot_mode, safety_mode values and status bits (RTDE guide)
ROBOT_MODE = {"POWER_OFF": 3, "POWER_ON": 4, "IDLE": 5, "RUNNING": 7}
SAFETY_NORMAL, SAFETY_PROTECTIVE_STOP, SAFETY_ROBOT_EMERGENCY_STOP = 1, 3, 7
RUNTIME_STOPPED, RUNTIME_PLAYING = 1, 2
STATUS_POWER_ON, STATUS_PROGRAM_RUNNING = 1, 2
SAFETY_BIT_NORMAL, SAFETY_BIT_PROTECTIVE, SAFETY_BIT_ROBOT_ESTOP, SAFETY_BIT_ESTOP, SAFETY_BIT_STOPPED = 0, 2, 6, 7, 10


@dataclasses.dataclass
class Conn:
    """One client connection of the stand-in (any port)."""
    sock: socket.socket
    kind: str
    rbuf: bytearray = dataclasses.field(default_factory=bytearray)
    out_names: list = dataclasses.field(default_factory=list)
    out_struct: struct.Struct | None = None
    out_every: int = 1
    started: bool = False
    inputs: dict = dataclasses.field(default_factory=dict)  # recipe id -> (names, struct)
    script: bytearray = dataclasses.field(default_factory=bytearray)
    pending: bytearray = dataclasses.field(default_factory=bytearray)  # a real-time package not yet sent whole


class RTDEServer:
    """The RTDE side of the controller.

    Args:
        ctrl: the controller (:class:`~protege.sim.ur_controller.URControllerSim`).
    """

    def __init__(self, ctrl):
        self.ctrl = ctrl
        self.owner: dict[str, Conn] = {}  # input name -> the connection whose recipe holds it
        self._prev_T = ctrl.arm.actual_tcp_T()
        self._prev_q_cmd = ctrl.arm.robot.commanded_joint_positions
        self._prev_t = ctrl.clock()
        self._snapshot: dict | None = None  # the outputs at controller time _prev_t

    def forget(self, conn: Conn) -> None:
        for name in [n for n, c in self.owner.items() if c is conn]:
            del self.owner[name]

    def on_data(self, conn: Conn) -> None:
        """Answer every complete package in ``conn``'s buffer.

        Raises:
            ValueError, struct.error: the client's stream is out of step (the caller closes it).
        """
        c = self.ctrl
        for kind, payload in rp.split_packages(conn.rbuf):
            if kind == rp.REQUEST_PROTOCOL_VERSION:
                (version,) = struct.unpack(">H", payload[:2])
                c.send(conn, rp.package(kind, struct.pack(">B", int(version in (1, 2)))))
            elif kind == rp.GET_URCONTROL_VERSION:
                c.send(conn, rp.package(kind, struct.pack(">IIII", *CONTROLLER_VERSION)))
            elif kind == rp.CONTROL_PACKAGE_SETUP_OUTPUTS:
                (freq,) = struct.unpack(">d", payload[:8])
                names = rp.names_of(payload[8:])
                types = [rp.output_type(n) or "NOT_FOUND" for n in names]
                if "NOT_FOUND" in types:
                    c.log(f"RTDE: unknown outputs {[n for n, t in zip(names, types) if t == 'NOT_FOUND']}")
                else:
                    conn.out_names, conn.out_struct = names, rp.recipe_struct(types)
                    hz = c.rate_hz if freq <= 0 else min(float(freq), c.rate_hz)
                    conn.out_every = max(1, int(round(c.rate_hz / hz)))
                c.send(conn, rp.package(kind, struct.pack(">B", 1) + ",".join(types).encode()))
            elif kind == rp.CONTROL_PACKAGE_SETUP_INPUTS:
                names = rp.names_of(payload)
                types = ["IN_USE" if n in self.owner and self.owner[n] is not conn else rp.input_type(n) or "NOT_FOUND"
                         for n in names]
                recipe = len(conn.inputs) + 1
                if all(t in rp.FIELD_FORMATS for t in types):
                    conn.inputs[recipe] = (names, rp.recipe_struct(types))
                    for n in names:
                        self.owner[n] = conn
                else:
                    c.log(f"RTDE: input recipe refused: {dict(zip(names, types))}")
                    recipe = 0
                c.send(conn, rp.package(kind, struct.pack(">B", recipe) + ",".join(types).encode()))
            elif kind == rp.CONTROL_PACKAGE_START:
                conn.started = conn.out_struct is not None
                c.send(conn, rp.package(kind, struct.pack(">B", int(conn.started))))
            elif kind == rp.CONTROL_PACKAGE_PAUSE:
                conn.started = False
                c.send(conn, rp.package(kind, struct.pack(">B", 1)))
            elif kind == rp.DATA_PACKAGE:
                recipe = payload[0]
                if recipe in conn.inputs:
                    names, st = conn.inputs[recipe]
                    self._write_inputs(names, st.unpack(payload[1:1 + st.size]))
            # text messages from the client ('M') need no answer

    def _write_inputs(self, names: list[str], values) -> None:
        c = self.ctrl
        i, fields = 0, {}
        for name in names:
            n = 6 if name == "external_force_torque" else 1  # the only VECTOR6D input
            fields[name] = values[i] if n == 1 else values[i:i + n]
            i += n
            if name.startswith("input_int_register_"):
                k = int(name[19:])
                c.in_int[k] = fields[name]
                if isinstance(c.script, ControlScript) and k == c.script.off_int:
                    c.script.feed_watchdog()
            elif name.startswith("input_double_register_"):
                c.in_double[int(name[22:])] = fields[name]
            elif name.startswith("input_bit_register_"):
                bit = 1 << int(name[19:])  # bit registers 64-127 above the 64 bits of the two words
                c.in_bits = (c.in_bits | bit) if fields[name] else (c.in_bits & ~bit)
        if "input_bit_registers0_to_31" in fields:
            c.in_bits = (c.in_bits & ~0xFFFFFFFF) | int(fields["input_bit_registers0_to_31"])
        if "input_bit_registers32_to_63" in fields:
            c.in_bits = (c.in_bits & ~(0xFFFFFFFF << 32)) | (int(fields["input_bit_registers32_to_63"]) << 32)
        for prefix, shift in (("standard", 0), ("configurable", 8), ("tool", 16)):
            if f"{prefix}_digital_output" in fields:
                mask = int(fields.get(f"{prefix}_digital_output_mask", 0)) << shift
                value = int(fields[f"{prefix}_digital_output"]) << shift
                c.digital_out = (c.digital_out & ~mask) | (value & mask)
        if "speed_slider_fraction" in fields and int(fields.get("speed_slider_mask", 0)) & 1:
            c.arm.speed_fraction = float(np.clip(fields["speed_slider_fraction"], 0.0, 1.0))
        if "standard_analog_output_0" in fields:
            mask = int(fields.get("standard_analog_output_mask", 0))
            for k in (0, 1):
                if mask & (1 << k):
                    c.analog_out[k] = float(fields[f"standard_analog_output_{k}"])

    def publish(self, tick: int, every_tick: bool) -> None:
        """Send the output recipes due at servo tick ``tick`` of the controller's clock: those of
        ``every_tick`` recipes (the servo rate) or of the slower ones, on their grid. The
        controller's loop sends the slower ones at each tick and the servo-rate ones once per pass
        (a loaded stand-in catching up on several ticks sends their newest state only, a sample
        per pass, rather than spend the time it is behind on the older ones)."""
        c = self.ctrl
        due = [k.data[1] for k in c.sel.get_map().values()
               if k.data[0] == "conn" and k.data[1].kind == "rtde" and k.data[1].started
               and (k.data[1].out_every == 1) == every_tick and tick % k.data[1].out_every == 0]
        if not due:
            return
        values = self.snapshot()
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
            c.send(conn, rp.package(rp.DATA_PACKAGE, b"\x01" + conn.out_struct.pack(*flat)))

    def _register_value(self, name: str):
        c = self.ctrl
        m = rp.REGISTER.match(name)
        if m:
            n = int(m.group(3))
            if m.group(2) == "bit":
                return bool((c.in_bits >> n) & 1) if m.group(1) == "input" else False
            regs = {("output", "int"): c.out_int, ("output", "double"): c.out_double,
                    ("input", "int"): c.in_int, ("input", "double"): c.in_double}[(m.group(1), m.group(2))]
            return regs[n].item()
        fmt = rp.FIELD_FORMATS[rp.OUTPUTS[name]]
        if fmt[0].isdigit():
            return [0] * int(fmt[0])
        return 0.0 if fmt == "d" else 0

    def snapshot(self) -> dict:
        """The state outputs (registers excepted) at this controller time, computed once a tick: the
        slower recipes, the servo-rate ones and the real-time stream of one tick share them (speeds
        are differences since the previous tick's)."""
        c, arm = self.ctrl, self.ctrl.arm
        now = c.clock()
        if self._snapshot is not None and now == self._prev_t:
            return self._snapshot
        d, s = arm.data, arm.scene
        T = arm.actual_tcp_T()
        q_cmd = arm.robot.commanded_joint_positions
        dt = now - self._prev_t
        if dt > 0:
            dR = self._prev_T[:3, :3].T @ T[:3, :3]
            speed = np.concatenate([(T[:3, 3] - self._prev_T[:3, 3]) / dt, self._prev_T[:3, :3] @ matrix_to_rotvec(dR) / dt])
            qd_cmd = (q_cmd - self._prev_q_cmd) / dt
        else:  # before the first tick
            speed, qd_cmd = np.zeros(6), np.zeros(6)
        self._prev_T, self._prev_q_cmd, self._prev_t = T, q_cmd, now
        safety_bits = (1 << SAFETY_BIT_NORMAL) if not (c.protective_stop or c.estop) else 0
        if c.protective_stop:
            safety_bits |= (1 << SAFETY_BIT_PROTECTIVE) | (1 << SAFETY_BIT_STOPPED)
        if c.estop:
            safety_bits |= (1 << SAFETY_BIT_ROBOT_ESTOP) | (1 << SAFETY_BIT_ESTOP) | (1 << SAFETY_BIT_STOPPED)
        safety_mode = (SAFETY_ROBOT_EMERGENCY_STOP if c.estop else
                       SAFETY_PROTECTIVE_STOP if c.protective_stop else SAFETY_NORMAL)
        mass, cog = c.payload
        powered = c.robot_mode_name != "POWER_OFF"
        self._snapshot = {
            "timestamp": now,
            "actual_q": d.qpos[s.arm_qpos], "actual_qd": d.qvel[s.arm_dof], "target_q": q_cmd, "target_qd": qd_cmd,
            "actual_TCP_pose": matrix_to_pose(T),
            "target_TCP_pose": matrix_to_pose(arm.target_tcp_T()),
            "actual_TCP_speed": speed, "target_TCP_speed": speed,
            "robot_mode": ROBOT_MODE[c.robot_mode_name],
            "joint_mode": [253 if powered else 239] * 6, "safety_mode": safety_mode, "safety_status": safety_mode,
            "runtime_state": RUNTIME_PLAYING if c.running else RUNTIME_STOPPED,
            "robot_status_bits": (STATUS_POWER_ON if powered else 0) | (STATUS_PROGRAM_RUNNING if c.running else 0),
            "safety_status_bits": safety_bits, "speed_scaling": arm.speed_fraction,
            "target_speed_fraction": arm.speed_fraction,
            "joint_temperatures": [30.0] * 6, "actual_main_voltage": 48.0, "actual_robot_voltage": 48.0 if powered else 0.0,
            "payload": mass, "payload_cog": cog, "actual_execution_time": 0.1,
            "actual_digital_output_bits": c.digital_out, "tcp_offset": arm.tcp_offset,
            "standard_analog_output0": c.analog_out[0], "standard_analog_output1": c.analog_out[1],
            "input_bit_registers0_to_31": c.in_bits & 0xFFFFFFFF, "input_bit_registers32_to_63": (c.in_bits >> 32) & 0xFFFFFFFF,
        }
        return self._snapshot
