"""``protege-ur-sim``: a Universal Robots controller stand-in over the MuJoCo UR5e + 2F-85.

It speaks, on loopback, the ports the unmodified ``ur-rtde`` client and the Robotiq URCap use, each
served by its own module:

* **29999 dashboard server** (:mod:`protege.sim.ur_dashboard`): text lines, the controller's replies.
* **30004 RTDE** (:mod:`protege.sim.ur_rtde_server`, wire format :mod:`protege.sim.rtde_protocol`):
  output recipes streamed on controller time at up to 500 Hz, input recipes written into the
  controller's registers, digital outputs and speed slider.
* **30003 script port** (:mod:`protege.sim.ur_script`): ``ur-rtde``'s ``rtde_control`` script,
  emulated command by command (commands it does not emulate stop the program with a runtime error),
  and single-command URScript programs (movej, movel, set_standard_digital_out, ...); anything else
  is refused as a compile error. Every client of the port is sent the real-time interface's state
  package at the servo rate (:mod:`protege.sim.ur_realtime`). Ports 30001 / 30002 are not served:
  their connections are refused, as on a controller with those interfaces disabled.
* **63352 Robotiq URCap socket** (:mod:`protege.sim.robotiq_standin`): replies without a line ending.

The arm (:mod:`protege.sim.ur_arm`): kinematics, moves, servo and speed commands, safety checks.
Protocol facts (ports, framing, recipes, the register handshake, command ids, the client's
timeouts) are those of ``shared/hardware/ur_rtde_protocol.md``, gathered from ur_rtde 1.6's
sources and Universal Robots' RTDE guide; what is emulated and what is refused, command by
command, is in ``docs/ur_standin.md``.

The simulated controller, modelled on an e-Series at 500 Hz:

* Time: ``timestamp`` counts seconds since the stand-in started, kept on the wall clock (the
  simulation catches up when a tick runs late).
* Power: the robot starts powered and brakes released (RUNNING); the dashboard's ``power off``
  stops the program and refuses new ones until ``power on`` and ``brake release``.
* A **protective stop** happens when a joint comes within 0.01 rad of its limit, the arm or
  gripper pushes on the table with more than ``table_force_limit`` N, or the program calls
  ``protective_stop()``; the arm holds, the program stops, and ``unlock protective stop`` on the
  dashboard clears it, from 5 s after the stop (the script must be sent again, as on the real
  arm). The RTDE watchdog (SET_WATCHDOG) stops the program when its register is not written for
  longer than its period.
* Operator input on stdin, one word per line, for tests and rehearsals: ``pstop``, ``estop``
  (an emergency stop: the program stops and the robot powers off), ``release`` (clear either; after
  an emergency stop the robot stays off until the dashboard powers it on and releases the brakes),
  ``freeze`` / ``thaw`` (stop / resume answering on every socket, like a hung controller), ``drop``
  (close every connection), ``quit``.
"""

from __future__ import annotations

import argparse
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

import numpy as np

from protege.sim import ur_realtime, urscript
from protege.sim.robotiq_standin import RobotiqStandIn
from protege.sim.ur_arm import URArm
from protege.sim.ur_dashboard import Dashboard
from protege.sim.ur_rtde_server import Conn, RTDEServer
from protege.sim.ur_script import ControlScript, Program, ScriptStopped

PORTS = {"dashboard": 29999, "rtde": 30004, "script": 30003, "robotiq": 63352}


class URControllerSim:
    """The stand-in controller: its sockets, program state and loop, over :class:`~protege.sim.ur_arm.URArm`.

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
        self.robot = self.backend.robot
        if not 0 < rate_hz <= 1.0 / self.robot.model.opt.timestep:
            raise ValueError(f"rate_hz must be in (0, {1.0 / self.robot.model.opt.timestep:g}], got {rate_hz}")
        self.dt = 1.0 / float(rate_hz)  # a servo tick: one or more physics steps
        self.rate_hz = float(rate_hz)
        self.arm = URArm(self.backend, table_force_limit)
        self.gripper = RobotiqStandIn(self.robot)
        # controller state
        self.payload = (0.0, np.zeros(3))
        self.in_int, self.in_double = np.zeros(48, np.int64), np.zeros(48)
        self.out_int, self.out_double = np.zeros(48, np.int64), np.zeros(48)
        self.in_bits = 0
        self.digital_out = 0  # bits 0-7 standard, 8-15 configurable, 16-17 tool
        self.analog_out = [0.0, 0.0]
        self.script: ControlScript | Program | None = None
        self.program_name = "<unnamed>"
        self.protective_stop = self.estop = False
        self.protective_stop_at = 0.0
        self.robot_mode_name = "RUNNING"
        self.frozen = False
        self.ticks = 0
        self._logged: set[str] = set()
        self.commands = queue.Queue()
        self.dashboard = Dashboard(self)
        self.rtde = RTDEServer(self)
        self._closed = self._shut = False
        self.sel = selectors.DefaultSelector()
        ports = {**PORTS, **(ports or {})}
        for kind, port in ports.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                s.close()
                self.close()
                raise OSError(e.errno, f"cannot listen on {host}:{port} ({kind}): {e.strerror}") from e
            s.listen(8)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("listen", kind))
        self.host, self.ports = host, ports

    @property
    def running(self) -> bool:
        """Whether a program runs (RTDE ``runtime_state`` PLAYING)."""
        return self.script is not None

    def clock(self) -> float:
        """Controller time s (``timestamp``)."""
        return self.robot.now()

    def log_once(self, key: str, message: str) -> None:
        """Log ``message`` the first time ``key`` comes up."""
        if key not in self._logged:
            self._logged.add(key)
            self.log(message)

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
                self.step()
                steps += 1
            if steps and not self.frozen:
                self.rtde.publish(self.ticks, every_tick=True)
                self._publish_realtime()
            next_t += self.dt
            now = time.monotonic()
            if next_t < now - 0.05:
                next_t = now  # a long stall: do not burst
            time.sleep(max(0.0, next_t - now))

    def step(self) -> None:
        """One servo tick of controller time: program, motion, physics, gripper, safety, RTDE outputs
        slower than the servo rate (those at the rate go once per pass of :meth:`serve_forever`)."""
        if self.script is not None:
            try:
                self.script.tick()
            except ScriptStopped as e:
                self.stop_program(str(e))
        self.arm.tick(self.dt)
        self.robot.advance(self.dt)
        self.gripper.tick()
        if not self.protective_stop:
            why = self.arm.safety_violation()
            if why:
                self.trip_protective_stop(why)
        self.ticks += 1
        if not self.frozen:
            self.rtde.publish(self.ticks, every_tick=False)

    def _publish_realtime(self) -> None:
        """The newest tick's state package to every client of the script port (once per pass of the
        loop: a loaded stand-in skips ticks, as its ``time`` field shows)."""
        conns = [k.data[1] for k in self.sel.get_map().values() if k.data[0] == "conn" and k.data[1].kind == "script"]
        if not conns:
            return
        data = ur_realtime.package(self.rtde.snapshot())
        for conn in conns:
            try:
                ur_realtime.offer(conn.sock, conn.pending, data)
            except OSError:
                self.close_conn(conn)

    def close(self) -> None:
        """Close every socket and the simulation (idempotent)."""
        self._closed = True
        if self._shut:
            return
        self._shut = True
        for key in list(self.sel.get_map().values()):
            try:
                key.fileobj.close()
            except OSError:
                pass
        self.sel.close()
        self.backend.close()

    # -- program state ----------------------------------------------------------------------------
    def stop_program(self, why: str) -> None:
        """Stop the running program (if any) and every motion."""
        if self.running:
            self.log(f"program stopped: {why}")
        self.script = None
        self.arm.stop()

    def trip_protective_stop(self, why: str) -> None:
        if not self.protective_stop:
            self.protective_stop = True
            self.protective_stop_at = self.clock()
            self.log(f"protective stop: {why}")
        self.stop_program("protective stop")

    def power(self, action: str) -> None:
        """The dashboard's ``power on`` / ``power off`` / ``brake release``."""
        if action == "off":
            self.stop_program("power off")
            self.robot_mode_name = "POWER_OFF"
        elif action == "on" and self.robot_mode_name == "POWER_OFF" and not self.estop:
            self.robot_mode_name = "IDLE"
        elif action == "brake release" and not self.estop:
            self.robot_mode_name = "RUNNING"
        self.log(f"robot mode {self.robot_mode_name}")

    def set_digital_out(self, n: int, value: bool) -> None:
        """A standard digital output 0-7 (``set_standard_digital_out``)."""
        if not 0 <= n <= 7:
            raise ScriptStopped(f"set_standard_digital_out: output {n} does not exist (0-7)")
        self.digital_out = (self.digital_out | (1 << n)) if value else (self.digital_out & ~(1 << n))

    def start_program(self, text: str) -> None:
        """Run a program received on the script port (it replaces the running one)."""
        refusal = ("the robot is in an emergency stop" if self.estop else
                   "the robot is in a protective stop" if self.protective_stop else
                   f"the robot is {self.robot_mode_name} (power on and release the brakes first)"
                   if self.robot_mode_name != "RUNNING" else None)
        if refusal:
            self.log(f"program refused: {refusal}")
            return
        try:
            if text.lstrip().startswith("def rtde_control():"):
                new, name = ControlScript(self, text), "rtde_control"
            else:
                new = Program(self, text)
                m = re.match(r"\s*(?:def|sec)\s+(\w+)", text)
                name = m.group(1) if m else "<unnamed>"
        except urscript.ScriptError as e:
            self.log(f"program refused (compile error): {e}")
            return
        self.stop_program("replaced by a new program")  # stops the arm too
        self.script, self.program_name = new, name
        self.log(f"program started: {name} ({len(text)} bytes of URScript)")

    # -- operator -----------------------------------------------------------------------------
    def _operator(self) -> None:
        while True:
            try:
                word = self.commands.get_nowait().strip().lower()
            except queue.Empty:
                return
            if word == "pstop":
                self.trip_protective_stop("operator")
            elif word == "estop":
                self.estop = True
                self.stop_program("emergency stop")
                self.robot_mode_name = "POWER_OFF"
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
                for key in list(self.sel.get_map().values()):
                    if key.data[0] != "listen":
                        self.close_conn(key.data[1])
                self.log("dropped every connection")
            elif word == "quit":
                self._closed = True
            elif word:
                self.log(f"unknown operator command {word!r} (pstop, estop, release, freeze, thaw, drop, quit)")

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
                if obj == "script":  # a slow reader of the state stream gets fresh packages, not seconds-old ones
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ur_realtime.SEND_BUFFER)
                conn = Conn(sock, obj)
                self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
                if obj == "dashboard":
                    self.send(conn, b"Connected: Universal Robots Dashboard Server\n")
                continue
            conn = obj
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self.close_conn(conn)
                continue
            conn.rbuf += data
            try:
                getattr(self, "_on_" + conn.kind)(conn)
            except (ValueError, struct.error) as e:
                self.log(f"{conn.kind}: closing a connection that sent garbage ({e})")
                self.close_conn(conn)

    def send(self, conn: Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)
        except (BlockingIOError, OSError):
            self.close_conn(conn)

    def close_conn(self, conn: Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.rtde.forget(conn)
        if conn.kind == "script" and conn.script.strip():
            self.start_program(conn.script.decode("utf-8", "replace"))  # what came before the close
            conn.script.clear()

    @staticmethod
    def _lines(conn: Conn):
        """The complete lines received on a text port, taken off its buffer."""
        while b"\n" in conn.rbuf:
            line, _, rest = bytes(conn.rbuf).partition(b"\n")
            conn.rbuf[:] = rest
            yield line.decode("utf-8", "replace").strip()

    def _on_dashboard(self, conn: Conn) -> None:
        for line in self._lines(conn):
            reply = self.dashboard.reply(line)
            if reply is None:
                self.send(conn, b"Disconnected\n")
                self.close_conn(conn)
                return
            self.send(conn, (reply + "\n").encode())

    def _on_robotiq(self, conn: Conn) -> None:
        for line in self._lines(conn):
            self.send(conn, self.gripper.handle(line).encode())  # the URCap's replies end with nothing

    def _on_rtde(self, conn: Conn) -> None:
        self.rtde.on_data(conn)

    def _on_script(self, conn: Conn) -> None:
        """A program is a ``def name(): ... end`` block (complete at its ``end`` in column 0) or one line."""
        conn.script += conn.rbuf
        conn.rbuf.clear()
        while True:
            text = conn.script.decode("utf-8", "replace")
            if re.match(r"\s*(def|sec)\s", text):
                m = re.search(r"^end[ \t]*\r?$", text, re.M)
                if m is None:
                    return
                program, rest = text[:m.end()], text[m.end():]
            elif "\n" in text:
                program, _, rest = text.partition("\n")
            else:
                return
            conn.script[:] = rest.encode()
            if program.strip():
                self.start_program(program)


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
