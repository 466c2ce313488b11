"""The Universal Robots RTDE wire protocol, as far as the UR controller stand-in needs it.

Sources: Universal Robots, "Real-Time Data Exchange (RTDE) Guide" (protocol version 2: package
types, recipes, field types) and its RTDE_Python_Client_Library (``serialize.py``); the facts the
unmodified ``ur-rtde`` 1.6 client relies on are in ``shared/hardware/ur_rtde_protocol.md``
(summarised in the :mod:`protege.sim.ur_controller` docstring; the server is
:mod:`protege.sim.ur_rtde_server`).

A package is ``uint16 size`` (header included) ``+ uint8 type + payload``, big-endian. Fields are
packed in recipe order with the formats of :data:`FIELD_FORMATS`.
"""

from __future__ import annotations

import re
import struct

HEADER = struct.Struct(">HB")

REQUEST_PROTOCOL_VERSION = 86  # 'V'
GET_URCONTROL_VERSION = 118    # 'v'
TEXT_MESSAGE = 77              # 'M'
DATA_PACKAGE = 85              # 'U'
CONTROL_PACKAGE_SETUP_OUTPUTS = 79  # 'O'
CONTROL_PACKAGE_SETUP_INPUTS = 73   # 'I'
CONTROL_PACKAGE_START = 83     # 'S'
CONTROL_PACKAGE_PAUSE = 80     # 'P'

# RTDE field type -> struct format (big-endian, no padding)
FIELD_FORMATS = {"BOOL": "?", "UINT8": "B", "UINT32": "I", "UINT64": "Q", "INT32": "i", "DOUBLE": "d",
                 "VECTOR3D": "3d", "VECTOR6D": "6d", "VECTOR6INT32": "6i", "VECTOR6UINT32": "6I"}

_V6 = "VECTOR6D"
OUTPUTS = {
    "timestamp": "DOUBLE", "target_q": _V6, "target_qd": _V6, "target_qdd": _V6, "target_current": _V6,
    "target_moment": _V6, "actual_q": _V6, "actual_qd": _V6, "actual_current": _V6, "joint_control_output": _V6,
    "actual_TCP_pose": _V6, "actual_TCP_speed": _V6, "actual_TCP_force": _V6, "target_TCP_pose": _V6,
    "target_TCP_speed": _V6, "actual_digital_input_bits": "UINT64", "joint_temperatures": _V6,
    "actual_execution_time": "DOUBLE", "robot_mode": "INT32", "joint_mode": "VECTOR6INT32", "safety_mode": "INT32",
    "safety_status": "INT32", "actual_tool_accelerometer": "VECTOR3D", "speed_scaling": "DOUBLE",
    "target_speed_fraction": "DOUBLE", "actual_momentum": "DOUBLE", "actual_main_voltage": "DOUBLE",
    "actual_robot_voltage": "DOUBLE", "actual_robot_current": "DOUBLE", "actual_joint_voltage": _V6,
    "actual_digital_output_bits": "UINT64", "runtime_state": "UINT32", "elbow_position": "VECTOR3D",
    "elbow_velocity": "VECTOR3D", "robot_status_bits": "UINT32", "safety_status_bits": "UINT32",
    "analog_io_types": "UINT32", "standard_analog_input0": "DOUBLE", "standard_analog_input1": "DOUBLE",
    "standard_analog_output0": "DOUBLE", "standard_analog_output1": "DOUBLE", "io_current": "DOUBLE",
    "euromap67_input_bits": "UINT32", "euromap67_output_bits": "UINT32", "euromap67_24V_voltage": "DOUBLE",
    "euromap67_24V_current": "DOUBLE", "tool_mode": "UINT32", "tool_analog_input_types": "UINT32",
    "tool_analog_input0": "DOUBLE", "tool_analog_input1": "DOUBLE", "tool_output_voltage": "INT32",
    "tool_output_current": "DOUBLE", "tool_temperature": "DOUBLE", "tcp_force_scalar": "DOUBLE",
    "output_bit_registers0_to_31": "UINT32", "output_bit_registers32_to_63": "UINT32",
    "input_bit_registers0_to_31": "UINT32", "input_bit_registers32_to_63": "UINT32", "tool_output_mode": "UINT8",
    "tool_digital_output0_mode": "UINT8", "tool_digital_output1_mode": "UINT8", "payload": "DOUBLE",
    "payload_cog": "VECTOR3D", "payload_inertia": _V6, "script_control_line": "UINT32", "ft_raw_wrench": _V6,
    "joint_position_deviation_ratio": "DOUBLE", "collision_detection_ratio": "DOUBLE", "time_scale_source": "UINT32",
    "actual_current_as_torque": _V6, "actual_current_window": _V6, "tcp_offset": _V6,
}
INPUTS = {
    "speed_slider_mask": "UINT32", "speed_slider_fraction": "DOUBLE", "standard_digital_output_mask": "UINT8",
    "standard_digital_output": "UINT8", "configurable_digital_output_mask": "UINT8",
    "configurable_digital_output": "UINT8", "tool_digital_output_mask": "UINT8", "tool_digital_output": "UINT8",
    "standard_analog_output_mask": "UINT8", "standard_analog_output_type": "UINT8", "standard_analog_output_0": "DOUBLE",
    "standard_analog_output_1": "DOUBLE", "input_bit_registers0_to_31": "UINT32", "input_bit_registers32_to_63": "UINT32",
    "external_force_torque": _V6,
}
REGISTER = re.compile(r"(input|output)_(int|double|bit)_register_(\d+)$")
_REGISTER_TYPES = {"int": "INT32", "double": "DOUBLE", "bit": "BOOL"}


def register_type(name: str) -> str | None:
    """Field type of ``input|output_int|double|bit_register_N`` (int / double 0-47, bit 64-127), else None."""
    m = REGISTER.match(name)
    if not m:
        return None
    n = int(m.group(3))
    ok = 64 <= n <= 127 if m.group(2) == "bit" else 0 <= n <= 47
    return _REGISTER_TYPES[m.group(2)] if ok else None


def output_type(name: str) -> str | None:
    """The field type of an output variable (registers of both directions can be read), None when unknown."""
    return OUTPUTS.get(name) or register_type(name)


def input_type(name: str) -> str | None:
    """The field type of an input variable (a client may write only ``input_*`` registers), None when unknown."""
    if name.startswith("input_") and register_type(name):
        return register_type(name)
    return INPUTS.get(name)


def recipe_struct(types: list[str]) -> struct.Struct:
    """The struct of a data package's fields (after the recipe id) for a recipe's ``types``."""
    return struct.Struct(">" + "".join(FIELD_FORMATS[t] for t in types))


def package(kind: int, payload: bytes = b"") -> bytes:
    """One RTDE package: header + ``payload``."""
    return HEADER.pack(HEADER.size + len(payload), kind) + payload


def split_packages(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete package off the front of ``buf``: ``[(type, payload), ...]``.

    Raises:
        ValueError: a header whose size is below the header's own (the stream is out of step).
    """
    out = []
    while len(buf) >= HEADER.size:
        size, kind = HEADER.unpack_from(buf)
        if size < HEADER.size:
            raise ValueError(f"RTDE package of size {size}: the stream is out of step")
        if len(buf) < size:
            break
        out.append((kind, bytes(buf[HEADER.size:size])))
        del buf[:size]
    return out


def names_of(csv: bytes) -> list[str]:
    """Variable names of a setup request (ur_rtde ends the list with a comma: empty names are dropped)."""
    return [n.strip() for n in csv.decode("ascii", "replace").split(",") if n.strip()]
