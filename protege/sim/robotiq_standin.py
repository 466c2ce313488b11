"""The Robotiq 2F-85's URCap socket protocol (port 63352), served over the simulated gripper.

The Robotiq URCap on a UR controller exposes the gripper's registers as ASCII lines on TCP port
63352 (Robotiq, "2F-85 & 2F-140 Instruction Manual", section 4.4 "Control" for the registers;
the socket syntax is the one ur_rtde's ``robotiq_gripper.cpp`` and Diffusion Policy's / UMI's
clients speak):

* ``SET ACT 1`` / ``SET POS 128 SPE 255 FOR 100 GTO 1`` -> ``ack`` (one or more variables);
* ``GET POS`` -> ``POS 128`` (one reply per ``GET`` line).

Requests end with a newline; replies end with nothing: the widely used clients (ur_rtde's
``robotiq_gripper.cpp`` and the ``robotiq_gripper.py`` of its docs, copied by many labs) compare a
reply to exactly ``ack`` and split ``GET`` replies as received, and they work on real grippers.

Registers: ACT activate (0/1), GTO go-to (0/1), POS position (0 open ... 255 closed; actual on
GET, request on SET), PRE the position request echo, SPE speed and FOR force (0-255), STA
activation status (0 reset, 1 activating, 3 active), OBJ object detection (0 moving, 1 stopped on
an object while opening, 2 while closing, 3 at the requested position), FLT fault (0 none, 7
"activate first": a motion was requested before activation).

:class:`RobotiqStandIn` keeps those registers and drives the simulated 2F-85 of a
:class:`~protege.sim.robot.SimRobot`. Its position register is linear in the finger gap (0 = the
0.085 m stroke, 255 = closed), as the real gripper's encoder is to within a few counts.
"""

from __future__ import annotations

import numpy as np

from protege.sim.robot import GRIPPER_MAX_WIDTH, SimRobot

FAULT_ACTIVATE_FIRST = 7
ACTIVATION_S = 0.3          # s from ACT 1 to STA 3 (the real gripper's takes a few seconds)
MIN_SPEED, MAX_SPEED = 0.02, 0.15   # m/s of the fingers at SPE 0 and 255 (2F-85 datasheet)
_WRITABLE = {"ACT", "GTO", "POS", "SPE", "FOR", "ATR", "ARD", "LBP", "LRP", "LGP"}


def pos_to_width(pos: float) -> float:
    """Finger gap m at position register ``pos``: linear, 0 fully open (the stroke) ... 255 closed."""
    return GRIPPER_MAX_WIDTH * (1.0 - float(np.clip(pos, 0, 255)) / 255.0)


def width_to_pos(width: float) -> int:
    """Position register (0-255) of a finger gap ``width`` m."""
    return int(round(255.0 * (1.0 - float(np.clip(width, 0.0, GRIPPER_MAX_WIDTH)) / GRIPPER_MAX_WIDTH)))


class RobotiqStandIn:
    """Registers of one simulated 2F-85, answering the URCap's lines.

    Args:
        robot: the simulated arm + gripper (its lockstep clock is the controller's).
    """

    def __init__(self, robot: SimRobot):
        self.robot = robot
        self.regs = {"ACT": 0, "GTO": 0, "PRE": 0, "SPE": 255, "FOR": 150, "STA": 0, "OBJ": 0, "FLT": 0}
        self._activated_at: float | None = None
        self._goal_t = self._moved_at = 0.0
        self._last_pos = -1

    def handle(self, line: str) -> str:
        """Reply to one request line (without its newline); never raises on bad input."""
        words = line.split()
        if not words:
            return "?"
        if words[0] == "GET" and len(words) == 2:
            return f"{words[1]} {self.get(words[1])}"
        if words[0] == "SET" and len(words) >= 3 and len(words) % 2 == 1:
            try:
                pairs = [(words[i], int(words[i + 1])) for i in range(1, len(words), 2)]
            except ValueError:
                return "?"
            if any(k not in _WRITABLE for k, _ in pairs):
                return "?"
            for k, v in pairs:
                self.set(k, int(np.clip(v, 0, 255)))
            return "ack"
        return "?"

    def get(self, name: str) -> int:
        if name == "POS":
            return width_to_pos(self.robot.gripper_state().width)
        return int(self.regs.get(name, 0))

    def set(self, name: str, value: int) -> None:
        now = self.robot.now()
        if name == "ACT":
            if value and not self.regs["ACT"]:
                self._activated_at = now
                self.regs.update(STA=1, FLT=0)
            elif not value:
                self._activated_at = None
                self.regs.update(STA=0, GTO=0, OBJ=0)
            self.regs["ACT"] = value
        elif name == "POS":
            self.regs["PRE"] = value
        elif name in ("SPE", "FOR", "GTO"):
            self.regs[name] = value
        if name in ("POS", "GTO") and self.regs["GTO"]:
            self._go(now)

    def _go(self, now: float) -> None:
        if self.regs["STA"] != 3:
            self.regs["FLT"] = FAULT_ACTIVATE_FIRST
            return
        target = pos_to_width(self.regs["PRE"])
        speed = MIN_SPEED + (MAX_SPEED - MIN_SPEED) * self.regs["SPE"] / 255.0
        width = self.robot.gripper_state().width
        self._goal_t = now + abs(target - width) / speed
        self.robot.set_width(target, self._goal_t)
        self.regs["OBJ"] = 0

    def tick(self) -> None:
        """Advance activation and object detection (call once per servo tick)."""
        now = self.robot.now()
        if self.regs["STA"] == 1 and self._activated_at is not None and now - self._activated_at >= ACTIVATION_S:
            self.regs["STA"] = 3
        if self.regs["STA"] != 3 or not self.regs["GTO"] or self.regs["OBJ"] != 0:
            return
        pos = self.get("POS")
        if pos != self._last_pos:
            self._last_pos, self._moved_at = pos, now
        pre = self.regs["PRE"]
        if now > self._goal_t and abs(pos - pre) <= 6:  # the fingers settle within ~2 mm of the request
            self.regs["OBJ"] = 3
        elif now > self._goal_t + 0.1 and now - self._moved_at > 0.1:  # stopped short: something is in the way
            self.regs["OBJ"] = 2 if pre > pos else 1
