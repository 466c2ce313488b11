"""The programs the UR controller stand-in runs: ``ur-rtde``'s ``rtde_control`` script, emulated
command by command, and single-command URScript programs.

**rtde_control** (uploaded by ``RTDEControlInterface`` to port 30003): the script loops reading a
command id from ``input_int_register_0`` (plus the register offset), its arguments from the input
double / int registers, and answers on ``output_int_register_0`` (1 ready, 2 done); results go to the
output registers. :class:`ControlScript` does what the script's ``process_cmd`` does for each
command in :data:`EMULATED`. Any other command id stops the program with a runtime error that names
it, logged once: the client sees the program stop and its call returns False, as with a real
controller whose program fails. A target that is not finite (NaN, inf), a moveL / moveJ_IK / path
pose without inverse kinematics, or a moveJ target beyond the joint limits stops the program the
same way (the real controller's runtime errors), before anything moves.

**URScript programs** (any other text on port 30003): the calls :mod:`protege.sim.urscript` parses
(movej, movel, stopj, stopl, set_standard_digital_out, set_tcp, textmsg), run in order; a program
with anything else does not start, and the refusal is logged (the controller's compile error).
"""

from __future__ import annotations

import re
from collections import deque

import numpy as np

from protege.sim import urscript
from protege.sim.ur_arm import MotionError, pose_trans

# command ids of ur-rtde 1.6's rtde_control script (its process_cmd)
MOVEJ, MOVEJ_IK, MOVEL, MOVEL_FK = 1, 2, 3, 4
FORCE_MODE, FORCE_MODE_STOP, ZERO_FT_SENSOR = 6, 7, 8
SPEEDJ, SPEEDL, SERVOJ, SERVOC = 9, 10, 11, 12
SPEED_STOP, SERVO_STOP, SET_PAYLOAD, TEACH_MODE, END_TEACH_MODE = 15, 16, 17, 18, 19
SERVOL, SET_TCP, GET_INVERSE_KIN_ARGS, PROTECTIVE_STOP = 24, 29, 30, 31
STOPL, STOPJ, SET_WATCHDOG = 33, 34, 35
IS_POSE_WITHIN_SAFETY_LIMITS, IS_JOINTS_WITHIN_SAFETY_LIMITS, GET_JOINT_TORQUES, POSE_TRANS = 36, 37, 38, 39
GET_TCP_OFFSET, GET_FORWARD_KIN_DEFAULT, GET_FORWARD_KIN_ARGS, MOVE_PATH = 40, 43, 44, 45
GET_INVERSE_KIN_DEFAULT, IS_STEADY = 46, 47
GET_INVERSE_KIN_HAS_SOLUTION_DEFAULT, GET_INVERSE_KIN_HAS_SOLUTION_ARGS = 60, 61
WATCHDOG, STOP_SCRIPT = 99, 255

# the script processes these at once and signals ready again (no "done")
RT_COMMANDS = {6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71, WATCHDOG}
EMULATED = {MOVEJ, MOVEJ_IK, MOVEL, MOVEL_FK, SPEEDJ, SPEEDL, SERVOJ, SPEED_STOP, SERVO_STOP, SET_PAYLOAD, SERVOL,
            SET_TCP, GET_INVERSE_KIN_ARGS, PROTECTIVE_STOP, STOPL, STOPJ, SET_WATCHDOG, IS_POSE_WITHIN_SAFETY_LIMITS,
            IS_JOINTS_WITHIN_SAFETY_LIMITS, POSE_TRANS, GET_TCP_OFFSET, GET_FORWARD_KIN_DEFAULT, GET_FORWARD_KIN_ARGS,
            MOVE_PATH, GET_INVERSE_KIN_DEFAULT, IS_STEADY, GET_INVERSE_KIN_HAS_SOLUTION_DEFAULT,
            GET_INVERSE_KIN_HAS_SOLUTION_ARGS, WATCHDOG, STOP_SCRIPT}
# names of the commands it does not emulate, for the runtime error (the script's textmsg names)
NOT_EMULATED = {FORCE_MODE: "force_mode", FORCE_MODE_STOP: "force_mode_stop", ZERO_FT_SENSOR: "zero_ftsensor",
                SERVOC: "servoc", TEACH_MODE: "teach_mode", END_TEACH_MODE: "end_teach_mode",
                20: "force_mode_set_damping", 21: "force_mode_set_gain_scaling", 25: "tool_contact",
                26: "get_steptime", 27: "get_actual_joint_positions_history", 28: "get_target_waypoint",
                GET_JOINT_TORQUES: "get_joint_torques", 41: "start_jog", 42: "stop_jog", 51: "move_until_contact",
                52: "freedrive_mode", 53: "end_freedrive_mode", 54: "get_freedrive_status", 56: "ft_rtde_input_enable",
                57: "enable_external_ft_sensor", 58: "get_actual_tool_flange_pose", 59: "set_gravity",
                62: "start_contact_detection", 63: "stop_contact_detection", 64: "read_contact_detection",
                65: "set_target_payload"}


class ScriptStopped(Exception):
    """The program stops with this runtime error."""


def _finite(name: str, values) -> np.ndarray:
    v = np.asarray(values, float)
    if not np.all(np.isfinite(v)):
        raise ScriptStopped(f"{name}: argument {np.round(v, 4).tolist()} is not finite")
    return v.copy()


class ControlScript:
    """ur-rtde's ``rtde_control`` script running on the stand-in.

    Args:
        ctrl: the controller (:class:`~protege.sim.ur_controller.URControllerSim`): its registers,
            arm, clock and program state.
        text: the uploaded script (its register offsets and any injected move path are read from it;
            a path the stand-in cannot run stops the program when it is run).
    """

    def __init__(self, ctrl, text: str):
        self.ctrl, self.arm = ctrl, ctrl.arm
        self.off_int = self._offset(text, "reg_offset_int")
        self.off_float = self._offset(text, "reg_offset_float")
        try:
            self.path, self.path_error = urscript.path_of(text), None
        except urscript.ScriptError as e:  # refused when the path is run (MOVE_PATH), as a runtime error
            self.path, self.path_error = None, f"move_path: {e}"
        self.executing = False
        self.busy = None  # callable: True when the running command is done
        self.watchdog_period: float | None = None
        self.watchdog_last = ctrl.arm.robot.now()
        ctrl.out_int[self.off_int] = 1  # signal_ready()

    @staticmethod
    def _offset(text: str, name: str) -> int:
        m = re.search(name + r"\s*=\s*(?:#[^\n]*\n)?\s*(\d+)", text)
        return int(m.group(1)) if m else 0

    def feed_watchdog(self) -> None:
        self.watchdog_last = self.arm.robot.now()

    def tick(self) -> None:
        """One controller cycle of the script's main loop.

        Raises:
            ScriptStopped: the program ends (stopScript) or fails (a runtime error).
        """
        c, off = self.ctrl, self.off_int
        now = self.arm.robot.now()
        if self.watchdog_period and now - self.watchdog_last > self.watchdog_period:
            raise ScriptStopped(f"RTDE watchdog: no command for {now - self.watchdog_last:.3f} s")
        if self.busy is not None:
            if self.busy():
                self.busy = None
                c.out_int[off] = 2  # signal_done_with_cmd()
            return
        cmd = int(c.in_int[off])
        if cmd in RT_COMMANDS:
            self.process(cmd)
            c.out_int[off] = 1
        elif cmd == 0:
            self.executing = False
            c.out_int[off] = 1
        elif not self.executing:
            self.executing = True
            c.out_int[off] = 0
            self.process(cmd)
            if self.busy is None:
                c.out_int[off] = 2

    def _await(self, asynchronous: bool) -> None:
        if not asynchronous:
            self.busy = lambda: not self.arm.moving()

    def process(self, cmd: int) -> None:
        """Execute one command as the script's ``process_cmd`` does.

        Raises:
            ScriptStopped: stopScript, a command not emulated, a non-finite argument, a motion the
                controller refuses.
        """
        c, arm = self.ctrl, self.arm
        f = c.in_double[self.off_float:self.off_float + 18]
        ints = c.in_int[self.off_int:self.off_int + 8]
        out = c.out_double[self.off_float:self.off_float + 6]
        asynchronous = bool(ints[1])
        try:
            if cmd in (MOVEJ, MOVEJ_IK, MOVEL, MOVEL_FK):
                target, speed, accel = _finite("move", f[:8])[:6], float(f[6]), float(f[7])
                if cmd == MOVEJ_IK:
                    q = arm.inverse_kinematics(target)
                    if q is None:
                        raise MotionError(f"movej_ik: no inverse kinematics for {np.round(target, 4).tolist()}")
                    target = q
                elif cmd == MOVEL_FK:
                    target = arm.forward_kinematics(target)
                kind = "j" if cmd in (MOVEJ, MOVEJ_IK) else "l"
                arm.start_path([(kind, target, speed, accel)])
                self._await(asynchronous)
            elif cmd == MOVE_PATH:
                if self.path_error:
                    raise ScriptStopped(self.path_error)
                if not self.path:
                    raise ScriptStopped("move_path: the uploaded script holds no path")
                moves = []
                for call in self.path:
                    kind = "j" if call.name == "movej" else "l" if call.name == "movel" else None
                    if kind is None:
                        raise ScriptStopped(f"move_path: {call.name} in a path is not emulated")
                    moves.append((kind, _finite(call.name, call.args["q" if kind == "j" else "pose"]),
                                  float(call.args["v"]), float(call.args["a"])))
                arm.start_path(moves)
                self._await(asynchronous)
            elif cmd in (SERVOJ, SERVOL):
                v = _finite("servoj" if cmd == SERVOJ else "servol", f[:11])
                arm.servo("j" if cmd == SERVOJ else "l", v[:6], float(v[9]))
            elif cmd in (SPEEDJ, SPEEDL):
                v = _finite("speedj" if cmd == SPEEDJ else "speedl", f[:8])
                arm.speed("j" if cmd == SPEEDJ else "l", v[:6], float(v[6]))
                if arm.capped:
                    c.log_once("speed_cap", arm.capped)
            elif cmd == SPEED_STOP:
                arm.stop_speed(float(f[0]) if np.isfinite(f[0]) and f[0] > 0 else None)
            elif cmd in (SERVO_STOP, STOPJ, STOPL):
                arm.stop()
            elif cmd == SET_PAYLOAD:
                v = _finite("set_payload", f[:4])
                c.payload = (float(v[0]), v[1:4])
            elif cmd == SET_TCP:
                arm.tcp_offset = _finite("set_tcp", f[:6])
            elif cmd == GET_TCP_OFFSET:
                out[:] = arm.tcp_offset
            elif cmd == GET_FORWARD_KIN_DEFAULT:
                out[:] = arm.forward_kinematics(arm.data.qpos[arm.scene.arm_qpos])
            elif cmd == GET_FORWARD_KIN_ARGS:
                v = _finite("get_forward_kin", f[:12])
                out[:] = arm.forward_kinematics(v[:6], v[6:12])
            elif cmd in (GET_INVERSE_KIN_DEFAULT, GET_INVERSE_KIN_ARGS,
                         GET_INVERSE_KIN_HAS_SOLUTION_DEFAULT, GET_INVERSE_KIN_HAS_SOLUTION_ARGS):
                args = cmd in (GET_INVERSE_KIN_ARGS, GET_INVERSE_KIN_HAS_SOLUTION_ARGS)
                v = _finite("get_inverse_kin", f[:14] if args else f[:6])
                q = (arm.inverse_kinematics(v[:6], v[6:12], float(v[12]), float(v[13])) if args
                     else arm.inverse_kinematics(v[:6]))
                if cmd in (GET_INVERSE_KIN_HAS_SOLUTION_DEFAULT, GET_INVERSE_KIN_HAS_SOLUTION_ARGS):
                    c.out_int[self.off_int + 1] = int(q is not None)
                elif q is None:
                    raise MotionError(f"get_inverse_kin: no solution for {np.round(v[:6], 4).tolist()}")
                else:
                    out[:] = q
            elif cmd == IS_POSE_WITHIN_SAFETY_LIMITS:
                c.out_int[self.off_int + 1] = int(arm.inverse_kinematics(_finite("is_within_safety_limits", f[:6]))
                                                  is not None)
            elif cmd == IS_JOINTS_WITHIN_SAFETY_LIMITS:
                c.out_int[self.off_int + 1] = int(arm.within_limits(_finite("is_within_safety_limits", f[:6])))
            elif cmd == POSE_TRANS:
                v = _finite("pose_trans", f[:12])
                out[:] = pose_trans(v[:6], v[6:12])
            elif cmd == IS_STEADY:
                c.out_int[self.off_int + 1] = int(arm.steady())
            elif cmd == PROTECTIVE_STOP:
                c.trip_protective_stop("triggered by the program (protective_stop())")
            elif cmd == SET_WATCHDOG:
                self.watchdog_period = 1.0 / f[0] if f[0] > 0 else None
                self.feed_watchdog()
            elif cmd == WATCHDOG:
                self.feed_watchdog()
            elif cmd == STOP_SCRIPT:
                raise ScriptStopped("stopScript")
            else:
                name = NOT_EMULATED.get(cmd, "an unknown command")
                raise ScriptStopped(f"{name} (rtde_control command {cmd}) is not emulated by the stand-in")
        except MotionError as e:
            raise ScriptStopped(str(e)) from None


class Program:
    """A URScript program (:func:`protege.sim.urscript.parse`) run call by call; a move runs to its end
    before the next call.

    Raises:
        urscript.ScriptError: from the constructor, for a program the stand-in cannot run.
    """

    def __init__(self, ctrl, text: str):
        self.ctrl, self.arm = ctrl, ctrl.arm
        self.calls = deque(urscript.parse(text))
        self.busy = None

    def tick(self) -> None:
        """Run the calls that are due.

        Raises:
            ScriptStopped: the program ended (message "program finished") or failed.
        """
        c, arm = self.ctrl, self.arm
        while not arm.moving():
            if not self.calls:
                raise ScriptStopped("program finished")
            call = self.calls.popleft()
            a = call.args
            try:
                if call.name in ("movej", "movel"):
                    kind = "j" if call.name == "movej" else "l"
                    target = _finite(call.name, a["q" if kind == "j" else "pose"])
                    if target.shape != (6,):
                        raise ScriptStopped(f"line {call.line}: {call.name} needs 6 values")
                    arm.start_path([(kind, target, float(a["v"]), float(a["a"]))])
                elif call.name in ("stopj", "stopl"):
                    arm.stop()
                elif call.name in ("set_standard_digital_out", "set_digital_out"):
                    c.set_digital_out(int(a["n"]), bool(a["b"]))
                elif call.name == "set_tcp":
                    arm.tcp_offset = _finite("set_tcp", a["pose"])
                elif call.name == "textmsg":
                    c.log(f"textmsg: {a['s1']}{a['s2']}")
            except MotionError as e:
                raise ScriptStopped(f"line {call.line}: {e}") from None

