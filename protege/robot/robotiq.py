"""The Robotiq 2F-85 through the Robotiq URCap's socket on the UR controller (TCP port 63352).

The URCap exposes the gripper's registers as ASCII requests, one per line (``SET POS 128 SPE 255
FOR 100 GTO 1`` -> ``ack``; ``GET POS`` -> ``POS 128``), whose replies come without a line ending;
see :mod:`protege.sim.robotiq_standin` for the
registers and Robotiq's "2F-85 & 2F-140 Instruction Manual", section 4.4.

:class:`RobotiqGripper` activates the gripper, then one thread owns the socket: it sends the
newest width request and polls position, object detection and fault status at ``poll_hz``,
so :meth:`~RobotiqGripper.set_width` and :meth:`~RobotiqGripper.gripper_state` never wait on the
network. Widths map linearly onto the position register: ``open_pos`` is the full ``stroke``,
``closed_pos`` zero (calibrate both on the real gripper: a 2F-85 usually closes fully near 225-230).
"""

from __future__ import annotations

import select
import socket
import threading
import time

import numpy as np

from protege.robot.history import History
from protege.robot.interfaces import DeviceError, Gripper, GripperState, check_array

FAULTS = {5: "action delayed: activation must finish first", 7: "activate the gripper first",
          8: "maximum operating temperature exceeded", 9: "no communication for 1 s",
          10: "under minimum operating voltage", 11: "automatic release in progress", 12: "internal fault",
          13: "activation fault: check for interference", 14: "overcurrent", 15: "automatic release completed"}


def ask(sock: socket.socket, request: str) -> str:
    """Send one request line to the URCap on ``sock``, return its reply (stripped).

    The URCap frames nothing: ``ack`` and ``POS 128`` come without a line ending, one reply per
    request, written at once (ur_rtde's clients compare the reply to ``b"ack"`` and split it as
    received). So one request is in flight at a time, and a reply is what has arrived once it
    parses; a trailing newline (some URCap versions, some stand-ins) is tolerated.

    Raises:
        DeviceError: the URCap closed the connection.
        OSError: the socket's timeout passed (``TimeoutError``) or the connection failed.
    """
    sock.sendall((request + "\n").encode())
    name = request.split()[1] if request.startswith("GET ") else None
    buf = b""
    while True:
        chunk = sock.recv(1024)
        if not chunk:
            raise DeviceError("the URCap closed the connection")
        buf += chunk
        reply = buf.decode("ascii", "replace").strip()
        if not reply:
            continue  # a stray line ending from an earlier reply
        if name is not None and reply != "?":
            if reply == name or (reply.startswith(name) and not reply.endswith(tuple("0123456789"))):
                continue  # the name arrived, the value not yet
            # the value's last digits may still be on their way in another segment
            while select.select([sock], [], [], 0)[0]:
                more = sock.recv(1024)
                if not more:
                    break
                buf += more
            reply = buf.decode("ascii", "replace").strip()
        return reply


class RobotiqGripper(Gripper):
    """A 2F-85 (or 2F-140 with ``stroke=0.14``) on a UR's Robotiq URCap.

    Args:
        host: the UR controller's address; port: the URCap's (63352).
        speed, force: 0-255, of every move.
        stroke: m, the opening at ``open_pos``.
        open_pos, closed_pos: position register values of fully open and closed.
        poll_hz: state polling rate, Hz.
        timeout_s: connect, activation and per-request timeout, s.
        history: samples kept for :meth:`gripper_states`.

    Raises:
        DeviceError: nothing answers, activation does not complete within ``timeout_s`` (plus
            3 s for the gripper's own calibration stroke), or the gripper reports a fault.
        ValueError: settings out of range.
    """

    def __init__(self, host: str, port: int = 63352, speed: int = 255, force: int = 100, stroke: float = 0.085,
                 open_pos: int = 0, closed_pos: int = 255, poll_hz: float = 50.0, timeout_s: float = 2.0,
                 history: int = 256):
        if not (0 <= speed <= 255 and 0 <= force <= 255 and 0 <= open_pos < closed_pos <= 255 and stroke > 0
                and poll_hz > 0 and timeout_s > 0):
            raise ValueError("gripper settings out of range (speed, force 0-255; 0 <= open_pos < closed_pos <= 255)")
        self.host, self.port = host, int(port)
        self.speed, self.force, self.stroke = int(speed), int(force), float(stroke)
        self.max_width = self.stroke
        self.open_pos, self.closed_pos = int(open_pos), int(closed_pos)
        self.period, self.timeout_s = 1.0 / poll_hz, float(timeout_s)
        self._history: History[GripperState] = History(history)
        self._lock = threading.Lock()
        self._request: int | None = None
        self._error: str | None = None
        self._closed = False
        self.object_detected = False
        try:
            self._sock = socket.create_connection((host, self.port), timeout=self.timeout_s)
        except OSError as e:
            raise DeviceError(f"no Robotiq URCap at {host}:{self.port} ({e}); is the URCap installed and the "
                              "gripper connected to the tool flange?") from e
        self._sock.settimeout(self.timeout_s)
        try:
            self._activate()
        except (OSError, DeviceError) as e:
            self._sock.close()
            raise DeviceError(f"Robotiq at {host}:{self.port}: {e}") from e
        self._sample()
        self._thread = threading.Thread(target=self._run, name="robotiq", daemon=True)
        self._thread.start()

    # -- protocol --------------------------------------------------------------------------------
    def _ask(self, request: str) -> str:
        return ask(self._sock, request)

    def _get(self, *names: str) -> list[int]:
        values = []
        for name in names:
            reply = self._ask(f"GET {name}")
            words = reply.split()
            if len(words) != 2 or words[0] != name or not words[1].lstrip("-").isdigit():
                raise DeviceError(f"unexpected reply {reply!r} to GET {name}")
            values.append(int(words[1]))
        return values

    def _set(self, **regs: int) -> None:
        request = "SET " + " ".join(f"{k} {v}" for k, v in regs.items())
        reply = self._ask(request)
        if reply != "ack":
            raise DeviceError(f"the URCap refused {request!r}: {reply!r}")

    def _activate(self) -> None:
        act, sta = self._get("ACT", "STA")
        if act == 1 and sta == 3:
            return
        self._set(ACT=0)
        self._set(ACT=1)
        deadline = time.monotonic() + self.timeout_s + 3.0
        while self._get("STA")[0] != 3:
            if time.monotonic() > deadline:
                raise DeviceError("activation did not complete (check the gripper's power and cable)")
            time.sleep(0.02)
        self._set(SPE=self.speed, FOR=self.force)

    def _sample(self) -> None:
        pos, obj, flt = self._get("POS", "OBJ", "FLT")
        if flt:
            raise DeviceError(f"gripper fault {flt}: {FAULTS.get(flt, 'see the manual')}")
        self.object_detected = obj in (1, 2)
        self._history.push(GripperState(self.pos_to_width(pos), time.monotonic()))

    def _run(self) -> None:
        next_t = time.monotonic()
        sent = None
        while not self._closed:
            try:
                with self._lock:
                    req = self._request
                if req is not None and req != sent:
                    self._set(POS=req, GTO=1)
                    sent = req
                self._sample()
            except (OSError, DeviceError) as e:
                if not self._closed:
                    self._error = str(e) if isinstance(e, DeviceError) else f"connection lost ({e})"
                return
            next_t = max(next_t + self.period, time.monotonic())
            time.sleep(max(0.0, next_t - time.monotonic()))

    # -- units --------------------------------------------------------------------------------
    def width_to_pos(self, width: float) -> int:
        """Position register for a finger gap ``width`` m (clipped to the stroke)."""
        s = float(np.clip(width, 0.0, self.stroke)) / self.stroke
        return int(round(self.closed_pos + s * (self.open_pos - self.closed_pos)))

    def pos_to_width(self, pos: int) -> float:
        """Finger gap m at position register ``pos``."""
        s = (pos - self.closed_pos) / (self.open_pos - self.closed_pos)
        return float(np.clip(s, 0.0, 1.0)) * self.stroke

    # -- Gripper -----------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise DeviceError("RobotiqGripper is closed")
        if self._error:
            raise DeviceError(f"Robotiq at {self.host}: {self._error}")

    def set_width(self, width: float, t: float) -> None:
        """Request ``width`` m (clipped to the stroke); sent at once at the configured speed and
        force (the gripper has no timed targets, so ``t`` only orders requests)."""
        width = float(check_array("width", width, ()))
        check_array("t", t, ())
        self._check()
        with self._lock:
            self._request = self.width_to_pos(width)

    def gripper_state(self) -> GripperState:
        self._check()
        last = self._history.last(1)
        if not last or time.monotonic() - last[0].timestamp > max(0.5, 5 * self.period):
            raise DeviceError(f"Robotiq at {self.host}: no state for over {max(0.5, 5 * self.period):g} s")
        return last[0]

    def gripper_states(self, n: int) -> list[GripperState]:
        self._check()
        return self._history.last(n)

    def close(self) -> None:
        """Stop polling and close the socket (the fingers stay where they are). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._thread.join(timeout=2 * self.timeout_s)
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
