"""The UR controller stand-in's real-time client interface: the robot state package streamed on port
30003 at the servo rate.

A UR controller sends every client of port 30003, from its connection on, one package per
controller cycle (Universal Robots, "Remote Control Via TCP/IP", the Client_Interface tables,
"RealTime 5.10" and later): big-endian, an int32 message size (1220) and 152 float64 fields in the
order of :data:`FIELDS`. Labs read it with a plain socket (``recv(1220)`` then, for instance, the
actual joint positions at bytes 252-300) or through python-urx's real-time monitor, next to
sending URScript on the same port.

What the stand-in streams: time, joint targets and actual positions / velocities, the TCP pose
(actual and target) and speed, robot, joint and safety modes, speed scaling, digital outputs,
program state, safety status and payload, from the same state as RTDE's outputs. Currents,
moments, forces, accelerations, voltages, the elbow and UR's test values are constants (0, the
voltages 48 V, the joint temperatures 30 C), as in the RTDE stream.

A client that does not read (ur-rtde keeps its script connection open and never reads it) is sent
whole packages as its socket buffer takes them (a small one, :data:`SEND_BUFFER`, so a slow reader
reads recent state); packages that do not fit are dropped whole, so a reader that comes back finds
the stream at a package boundary.
"""

from __future__ import annotations

import struct

import numpy as np

# (name, number of float64 values): the package after its int32 size, RealTime 5.10+
FIELDS = (
    ("time", 1), ("q_target", 6), ("qd_target", 6), ("qdd_target", 6), ("i_target", 6), ("m_target", 6),
    ("q_actual", 6), ("qd_actual", 6), ("i_actual", 6), ("i_control", 6), ("tool_vector_actual", 6),
    ("tcp_speed_actual", 6), ("tcp_force", 6), ("tool_vector_target", 6), ("tcp_speed_target", 6),
    ("digital_input_bits", 1), ("motor_temperatures", 6), ("controller_timer", 1), ("test_value", 1),
    ("robot_mode", 1), ("joint_modes", 6), ("safety_mode", 1), ("test_value_2", 6),
    ("tool_accelerometer_values", 3), ("test_value_3", 6), ("speed_scaling", 1), ("linear_momentum_norm", 1),
    ("test_value_4", 1), ("test_value_5", 1), ("v_main", 1), ("v_robot", 1), ("i_robot", 1), ("v_actual", 6),
    ("digital_outputs", 1), ("program_state", 1), ("elbow_position", 3), ("elbow_velocity", 3),
    ("safety_status", 1), ("test_value_6", 1), ("test_value_7", 1), ("test_value_8", 1), ("payload_mass", 1),
    ("payload_cog", 3), ("payload_inertia", 6),
)
N_VALUES = sum(n for _, n in FIELDS)          # 152
PACKAGE = struct.Struct(f">i{N_VALUES}d")     # 1220 bytes
MESSAGE_SIZE = PACKAGE.size
SEND_BUFFER = 32 * 1024                       # bytes of a script connection's send buffer: ~25 packages, 50 ms

# the RTDE snapshot's names for the fields the stand-in models
_FROM_RTDE = {"time": "timestamp", "q_target": "target_q", "qd_target": "target_qd", "q_actual": "actual_q",
              "qd_actual": "actual_qd", "tool_vector_actual": "actual_TCP_pose", "tcp_speed_actual": "actual_TCP_speed",
              "tool_vector_target": "target_TCP_pose", "tcp_speed_target": "target_TCP_speed",
              "motor_temperatures": "joint_temperatures", "robot_mode": "robot_mode", "joint_modes": "joint_mode",
              "safety_mode": "safety_mode", "speed_scaling": "speed_scaling", "v_main": "actual_main_voltage",
              "v_robot": "actual_robot_voltage", "digital_outputs": "actual_digital_output_bits",
              "program_state": "runtime_state", "safety_status": "safety_status", "payload_mass": "payload",
              "payload_cog": "payload_cog"}


def package(values: dict) -> bytes:
    """The 1220-byte state package of one controller cycle from its RTDE output values
    (:meth:`~protege.sim.ur_rtde_server.RTDEServer.snapshot`; the fields RTDE has no value for are 0).
    """
    flat = []
    for name, n in FIELDS:
        v = values.get(_FROM_RTDE.get(name))
        if v is None:
            flat.extend([0.0] * n)
        else:
            v = np.atleast_1d(np.asarray(v, float))
            if v.shape != (n,):
                raise ValueError(f"real-time field {name} needs {n} values, got {v.shape}")
            flat.extend(v.tolist())
    return PACKAGE.pack(MESSAGE_SIZE, *flat)


def offer(sock, pending: bytearray, data: bytes) -> None:
    """Send ``data`` to a non-blocking socket whole or not at all: first what is left of an earlier
    package (``pending``, kept for the next call if it still does not fit), then ``data`` if that went
    out; a package that does not fit is dropped, one that fits in part is finished later.

    Raises:
        OSError: the connection is gone (not for a full buffer).
    """
    try:
        if pending:
            del pending[:sock.send(pending)]
            if pending:
                return
        n = sock.send(data)
        pending += data[n:]
    except BlockingIOError:
        return


def unpack(data: bytes) -> dict:
    """Field -> value (float, or an array for vectors) of one package (for tests and tools).

    Raises:
        ValueError: not a whole package of this version (its size field is not 1220).
    """
    if len(data) != MESSAGE_SIZE or struct.unpack_from(">i", data)[0] != MESSAGE_SIZE:
        raise ValueError(f"not a {MESSAGE_SIZE}-byte RealTime 5.10 package")
    out, i = {}, 0
    flat = PACKAGE.unpack(data)[1:]
    for name, n in FIELDS:
        out[name] = flat[i] if n == 1 else np.array(flat[i:i + n])
        i += n
    return out
