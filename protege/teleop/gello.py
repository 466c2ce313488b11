"""GELLO: a leader arm of Dynamixel servos whose joints the follower arm copies (``teleop=gello``;
Wu et al., "GELLO: A General, Low-Cost, and Intuitive Teleoperation Framework", 2023).

The leader's servos (torque off, moved by hand) are read in their own thread with one
GroupSyncRead of Present Position (address 132, 4 bytes) per cycle over Dynamixel Protocol 2.0
(``dynamixel-sdk``, through the U2D2's serial port), at ``rate_hz`` (200 by default; at 1 Mbit/s
seven XL330s answer in about 5 ms). The ticks (4096 a turn) become follower joint angles through
a calibration (:class:`GelloCalibration`: per joint a sign and an offset, and the gripper trigger's
open and closed ticks) that ``protege-hardware calibrate-gello`` walks the user through and saves
per leader arm.

The device gives joint targets: (7,) = 6 joint positions rad + gripper width m, which the control
loop sends through :class:`~protege.control.safety.JointSafetyFilter` (joint limits and speed, the
TCP box and speed through forward kinematics) to servoJ. GELLO's start gate: the follower holds
still until the leader is within ``start_tolerance`` rad (every joint) of the follower's pose,
then follows, ramping from where it stood over ``ramp_s`` s. A servo that stops answering, a
CRC error that does not clear, or an unplugged U2D2 stops the arm and names the servo.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .session import DISCARD, KEEP, QUIT
from .velocity import DeviceReader, TeleopDeviceLost

ADDR_TORQUE_ENABLE, ADDR_PRESENT_POSITION = 64, 132
TICKS_PER_TURN = 4096


def ticks_to_rad(ticks) -> np.ndarray:
    """Present Position ticks (int32) -> rad (2048 ticks = pi)."""
    return np.asarray(ticks, float) * (2 * np.pi / TICKS_PER_TURN)


@dataclass
class GelloCalibration:
    """How a leader arm's servos map to the follower's joints and gripper.

    Attributes:
        joint_ids: the 6 servos of joints 1-6, base first.
        signs: per joint +1 or -1 (a servo turning against the follower's joint).
        offsets: per joint rad: ``q = sign * (servo_rad - offset)``.
        gripper_id: the trigger's servo, or None (no gripper control).
        gripper_open, gripper_closed: its ticks with the trigger released / squeezed.
        open_width: m, the follower gripper's width when released (closed is 0).

    Raises:
        ValueError: not 6 joints, a sign other than +-1, or equal open and closed ticks.
    """

    joint_ids: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    signs: list[float] = field(default_factory=lambda: [1.0] * 6)
    offsets: list[float] = field(default_factory=lambda: [0.0] * 6)
    gripper_id: int | None = 7
    gripper_open: int = 2048
    gripper_closed: int = 2648
    open_width: float = 0.085

    def __post_init__(self):
        if len(self.joint_ids) != 6 or len(self.signs) != 6 or len(self.offsets) != 6:
            raise ValueError("a GELLO calibration has 6 joint ids, signs and offsets")
        if not all(abs(s) == 1 for s in self.signs):
            raise ValueError(f"signs must be +1 or -1, got {self.signs}")
        if self.gripper_id is not None and self.gripper_open == self.gripper_closed:
            raise ValueError("gripper_open and gripper_closed ticks must differ")

    @property
    def ids(self) -> list[int]:
        return [*self.joint_ids, *([self.gripper_id] if self.gripper_id is not None else [])]

    def joints(self, ticks) -> np.ndarray:
        """Servo ticks of :attr:`ids` -> follower joints (6,) rad."""
        return np.asarray(self.signs) * (ticks_to_rad(np.asarray(ticks)[:6]) - np.asarray(self.offsets))

    def width(self, ticks) -> float:
        """Servo ticks of :attr:`ids` -> gripper width m (open_width released .. 0 squeezed)."""
        if self.gripper_id is None:
            return self.open_width
        frac = (float(ticks[6]) - self.gripper_open) / (self.gripper_closed - self.gripper_open)
        return float(self.open_width * (1.0 - np.clip(frac, 0.0, 1.0)))

    @classmethod
    def fit(cls, ticks_at_reference, reference_q, signs=None, joint_ids=None, gripper_id=7, gripper_open=2048,
            gripper_closed=2648, open_width=0.085) -> GelloCalibration:
        """The calibration that maps the leader's ticks, held in the follower's ``reference_q`` (6,)
        rad pose, to exactly that pose: ``offset = servo_rad - sign * q_ref``."""
        signs = [1.0] * 6 if signs is None else [float(s) for s in signs]
        rad = ticks_to_rad(np.asarray(ticks_at_reference)[:6])
        offsets = rad - np.asarray(signs) * np.asarray(reference_q, float)
        return cls(list(joint_ids or [1, 2, 3, 4, 5, 6]), signs, [float(x) for x in offsets], gripper_id,
                   int(gripper_open), int(gripper_closed), float(open_width))

    def save(self, path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path) -> GelloCalibration:
        """Raises:
            FileNotFoundError: no calibration there (says how to make one)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no GELLO calibration at {path}: run protege-hardware calibrate-gello --port <port> "
                                    f"--out {path} first")
        return cls(**json.loads(path.read_text()))


class GelloReader(DeviceReader):
    """The leader's servos through dynamixel-sdk (see the module docstring).

    Args:
        port: the U2D2's serial port (``/dev/serial/by-id/usb-FTDI_...``: stable across replugs).
        ids: the servos to read, in order (joints 1-6, then the gripper's).
        baudrate: the servos' baud rate (GELLO's setup: 57600 from the factory; 1000000 for >= 100 Hz).
        rate_hz: reads per second.
        max_failures: consecutive failed reads before the device counts as lost.
    """

    def __init__(self, port: str, ids, baudrate: int = 1_000_000, rate_hz: float = 200.0, max_failures: int = 5):
        super().__init__("gello")
        self.port_name, self.ids, self.baudrate = str(port), [int(i) for i in ids], int(baudrate)
        self.period, self.max_failures = 1.0 / float(rate_hz), int(max_failures)
        self.port = self.packet = self.sync = None
        self.ticks: np.ndarray | None = None
        self.reads = 0

    def open(self) -> None:
        try:
            from dynamixel_sdk import COMM_SUCCESS, GroupSyncRead, PacketHandler, PortHandler
        except ImportError as e:
            raise TeleopDeviceLost("gello: needs dynamixel-sdk: pip install 'protege[teleop]'") from e
        self.port, self.packet = PortHandler(self.port_name), PacketHandler(2.0)
        try:
            opened = self.port.openPort() and self.port.setBaudRate(self.baudrate)
        except Exception as e:  # noqa: BLE001 - pyserial's SerialException and OSError alike
            raise TeleopDeviceLost(f"gello: cannot open {self.port_name}: {e} (plugged in? in the dialout group?)") from e
        if not opened:
            raise TeleopDeviceLost(f"gello: cannot open {self.port_name} at {self.baudrate} baud")
        for i in self.ids:
            model, result, error = self.packet.ping(self.port, i)
            if result != COMM_SUCCESS:
                self.port.closePort()
                raise TeleopDeviceLost(f"gello: servo {i} does not answer a ping on {self.port_name} at {self.baudrate} "
                                       f"baud ({self.packet.getTxRxResult(result)}); check its id, the baud rate and the cable")
            # the leader is moved by hand: torque off (the EEPROM and the position are then free)
            result, error = self.packet.write1ByteTxRx(self.port, i, ADDR_TORQUE_ENABLE, 0)
            if result != COMM_SUCCESS or error:
                self.port.closePort()
                raise TeleopDeviceLost(f"gello: servo {i} refused torque off ({self.packet.getTxRxResult(result)}"
                                       f"{', ' + self.packet.getRxPacketError(error) if error else ''})")
        self.sync = GroupSyncRead(self.port, self.packet, ADDR_PRESENT_POSITION, 4)
        for i in self.ids:
            self.sync.addParam(i)
        self._comm_success = COMM_SUCCESS
        ticks = self._read()
        if isinstance(ticks, str):
            self.port.closePort()
            raise TeleopDeviceLost(f"gello: {ticks}")
        self._publish(ticks)

    def _read(self) -> np.ndarray | str:
        """One GroupSyncRead: the ticks, or what went wrong (naming the servo)."""
        try:
            result = self.sync.txRxPacket()
        except OSError as e:
            return f"the U2D2 at {self.port_name} went away ({e})"
        if result != self._comm_success:  # which servo: the SDK does not say, a ping does
            why = self.packet.getTxRxResult(result)
            self.port.clearPort()
            missing = [i for i in self.ids if self.packet.ping(self.port, i)[1] != self._comm_success]
            who = f"servo {missing[0]}" if missing else "a servo"
            return f"{who} did not answer ({why})"
        raw = np.array([self.sync.getData(i, ADDR_PRESENT_POSITION, 4) for i in self.ids], np.int64)
        return np.where(raw >= 2**31, raw - 2**32, raw)  # the SDK hands int32 back unsigned

    def _publish(self, ticks: np.ndarray) -> None:
        with self._lock:
            self.ticks = ticks
            self.reads += 1
            self._state.t_event, self._state.events = time.monotonic(), self._state.events + 1

    def run(self) -> None:
        failures, t_next = 0, time.monotonic()
        while not self._stop.is_set():
            got = self._read()
            if isinstance(got, str):
                failures += 1
                if failures >= self.max_failures or "went away" in got:
                    self._lost(got)
                    return
                self.port.clearPort()
            else:
                failures = 0
                self._publish(got)
            t_next += self.period
            time.sleep(max(0.0, t_next - time.monotonic()))
            t_next = max(t_next, time.monotonic() - self.period)

    def snapshot_ticks(self) -> tuple[np.ndarray | None, float | None, str | None]:
        with self._lock:
            return (None if self.ticks is None else self.ticks.copy()), self._state.t_event, self._state.lost

    def close(self) -> None:
        super().close()
        if self.port is not None and self.port.is_open:
            try:
                self.port.closePort()
            except OSError:
                pass


class Gello:
    """``teleop=gello``: the leader arm as a :class:`~protege.teleop.session.TeleopDevice` of joint
    targets (see the module docstring).

    Args:
        port: the U2D2's serial port.
        calibration: a :class:`GelloCalibration`, its dict, or the JSON file ``calibrate-gello`` wrote.
        baudrate, rate_hz: see :class:`GelloReader`.
        start_tolerance: rad, every joint of the leader within this of the follower before it follows.
        ramp_s: s over which the follower moves from where it stood onto the leader.
        max_age_s: a reading older than this stops the arm (the reader stalled).
        fps: the control rate, Hz.
        keys: read k (keep), x (discard), Q (quit) from this terminal.
    """

    command = "joints"

    def __init__(self, port: str, calibration, baudrate: int = 1_000_000, rate_hz: float = 200.0,
                 start_tolerance: float = 0.3, ramp_s: float = 1.0, max_age_s: float = 0.1, fps: float = 10.0,
                 keys: bool = True):
        if isinstance(calibration, GelloCalibration):
            self.calibration = calibration
        elif isinstance(calibration, (str, Path)):
            self.calibration = GelloCalibration.load(calibration)
        else:
            self.calibration = GelloCalibration(**dict(calibration))
        if not start_tolerance > 0 or ramp_s < 0 or not max_age_s > 0 or not fps > 0:
            raise ValueError("gello: start_tolerance, max_age_s and fps must be > 0, ramp_s >= 0")
        self.reader = GelloReader(port, self.calibration.ids, baudrate, rate_hz)
        self.start_tolerance, self.ramp_steps, self.max_age_s = float(start_tolerance), max(1, round(ramp_s * fps)), float(max_age_s)
        self.name = "gello"
        self.keys = None
        if keys:
            from .devices import TerminalKeys

            self.keys = TerminalKeys()
        self._pending: str | None = None
        self.engaged, self.k, self.hold, self.gap = False, 0, None, np.inf
        self.width = self.calibration.open_width

    def reset(self, seed: int, obs, task_state=None) -> None:
        self.reader.start()
        if self.keys is not None:
            self.keys.start()
            self.keys.read()
        self.hold = np.asarray(obs["joint_positions"], float).copy()
        self.engaged, self.k, self._pending = False, 0, None

    def leader(self) -> tuple[np.ndarray, float]:
        """The leader's joints (6,) rad and gripper width m now.

        Raises:
            TeleopDeviceLost: a servo stopped answering, or no reading for ``max_age_s``.
        """
        ticks, t, lost = self.reader.snapshot_ticks()
        if lost is not None:
            raise TeleopDeviceLost(f"teleop device gello: {lost}")
        if ticks is None or time.monotonic() - t > self.max_age_s:
            age = "never" if t is None else f"{time.monotonic() - t:.2f} s ago"
            raise TeleopDeviceLost(f"teleop device gello: its last reading came {age} (more than {self.max_age_s} s)")
        return self.calibration.joints(ticks), self.calibration.width(ticks)

    def act(self, obs) -> np.ndarray:
        """The joint target for the end of this cycle ((7,): 6 joints rad + gripper width m)."""
        q, width = self.leader()
        if self.keys is not None and self._pending is None:
            self._pending = {"k": KEEP, "x": DISCARD, "Q": QUIT}.get(next(
                (c for c in self.keys.read() if c in "kxQ"), ""), None)
        if not self.engaged:
            self.gap = float(np.abs(q - self.hold).max())
            if self.gap > self.start_tolerance:
                return np.concatenate([self.hold, [self.width]])  # the follower waits for the leader
            self.engaged, self.k = True, 0
        self.k += 1
        alpha = min(1.0, self.k / self.ramp_steps)
        self.width = width
        return np.concatenate([self.hold + alpha * (q - self.hold), [width]])

    def poll(self) -> str | None:
        decision, self._pending = self._pending, None
        return decision

    def status(self) -> str:
        return ("gello: following" if self.engaged else
                f"gello: move the leader to the arm's pose (largest joint gap {self.gap:.2f} rad > {self.start_tolerance})")

    def close(self) -> None:
        self.reader.close()
        if self.keys is not None:
            self.keys.close()


HOME_Q = (0.0, -np.pi / 2, np.pi / 2, -np.pi / 2, -np.pi / 2, 0.0)  # a UR's usual home: elbow up, tool down


def calibrate(port: str, out, joint_ids=(1, 2, 3, 4, 5, 6), gripper_id: int | None = 7, signs=None,
              reference_q=HOME_Q, baudrate: int = 1_000_000, open_width: float = 0.085, ask=input, say=print) -> GelloCalibration:
    """Walk the user through a leader arm's calibration and save it to ``out`` (JSON).

    The user holds the leader in the follower's ``reference_q`` pose (rad; default a UR's home:
    0, -90, 90, -90, -90, 0 deg), then releases and squeezes the gripper trigger; each step ends
    with Enter. ``signs`` (+-1 per joint) say which servos turn against their follower joint (GELLO's
    build guide lists them per arm).

    Raises:
        TeleopDeviceLost: the port or a servo does not answer.
    """
    reader = GelloReader(port, [*joint_ids, *([gripper_id] if gripper_id is not None else [])], baudrate)
    reader.open()

    def ticks() -> np.ndarray:
        got = reader._read()
        if isinstance(got, str):
            raise TeleopDeviceLost(f"gello: {got}")
        return got

    try:
        deg = ", ".join(f"{np.degrees(x):.0f}" for x in reference_q)
        ask(f"1/3 hold the leader in the reference pose (joints {deg} deg, like the follower's), then press Enter ")
        at_ref = ticks()
        g_open = g_closed = None
        if gripper_id is not None:
            ask("2/3 release the gripper trigger fully, then press Enter ")
            g_open = int(ticks()[6])
            ask("3/3 squeeze the gripper trigger fully, then press Enter ")
            g_closed = int(ticks()[6])
        cal = GelloCalibration.fit(at_ref, reference_q, signs, list(joint_ids), gripper_id,
                                   g_open if g_open is not None else 2048, g_closed if g_closed is not None else 2648,
                                   open_width)
        path = cal.save(out)
        say(f"calibration saved to {path}: offsets (rad) {np.round(cal.offsets, 4).tolist()}, signs {cal.signs}"
            + (f", trigger {g_open} (open) .. {g_closed} (closed) ticks" if gripper_id is not None else ""))
        return cal
    finally:
        reader.close()
